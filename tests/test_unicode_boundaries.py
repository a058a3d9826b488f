"""Text the trace cannot store (lone UTF-16 surrogates): refused on input before anything is
recorded, replaced on a model's answer (a recorded fallback), never a crash mid-run."""

from __future__ import annotations

import json

import pytest

from refinegraph import run
from refinegraph.config import ConfigError
from refinegraph.models import ScriptedModel
from refinegraph.models.base import valid_unicode
from refinegraph.trace.verify import verify_run


def test_valid_unicode_replaces_lone_surrogates_and_keeps_pairs():
    assert valid_unicode("a\ud800b") == "a\ufffdb"
    assert valid_unicode("\ud83d\ude00") == "\U0001f600"  # a pair, as JSON escapes an emoji
    assert valid_unicode("plain caf\u00e9") == "plain caf\u00e9"


async def test_a_model_answer_with_a_lone_surrogate_is_replaced_and_recorded(store):
    model = ScriptedModel(lambda messages: "The answer is 12\ud800.", name="local")
    result = await run("greedy", "What is 3 times 4?", models={"local": model}, store=store)
    assert result.answer == "12"
    [call] = store.events(result.run_id, types={"llm_call"})
    assert json.loads(store.blob_bytes(call["response_blob"]))["texts"] == ["The answer is 12\ufffd."]
    assert result.fallbacks == {"lone_surrogate_replaced": 1}
    check = verify_run(store, result.run_id)
    assert check.ok and check.sealed
    [fallback] = store.events(result.run_id, types={"fallback"})
    assert fallback["kind"] == "lone_surrogate_replaced"


async def test_an_input_with_a_lone_surrogate_is_refused_before_any_record(store):
    model = ScriptedModel(lambda messages: "12", name="local")
    with pytest.raises(ConfigError, match="cannot be recorded"):
        await run("greedy", "What is \udcff times 4?", models={"local": model}, store=store)
    assert store.all_runs() == [] and model.calls == []
