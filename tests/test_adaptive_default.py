"""adaptive-sc's default stopping rule (issue 16, point 7): Beta rule at 0.95, two samples a
batch, so four unanimous samples stop (three, at 0.9, lost a question on held-out Date)."""

from __future__ import annotations

import pytest

from refinegraph.graphs.allocation import adaptive
from refinegraph.models import ScriptedModel
from refinegraph.runner import run


async def test_adaptive_sc_default_stops_after_four_unanimous_samples(store):
    model = ScriptedModel(lambda messages: "The answer is 12.", name="local")
    result = await run("adaptive-sc", "Tom has 3 boxes of 4 pens. How many pens?", params={"n": 40},
                       models={"local": model}, store=store)
    checks = store.events(result.run_id, types={"sampling_check"})
    assert [(c["samples"], c["stop"]) for c in checks] == [(2, False), (4, True)]
    assert checks[-1]["posterior"] == pytest.approx(31 / 32) and result.answer == "12"


def test_a_split_vote_still_samples_on():
    # One dissent: 4 against 1 gives 57/64 < 0.9, 5 against 1 gives 15/16: six samples.
    outcome = adaptive(["a", "b", "a", "a", "a", "a", "a"], batch_size=1, threshold=0.9)
    assert outcome.used == 6 and outcome.answer == "a"
