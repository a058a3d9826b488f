"""Dataset-level sample allocation, the per-question adaptive rule, and `bench allocation`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from refinegraph.cli.app import app
from refinegraph.graphs.allocation import (
    adaptive,
    allocate,
    allocate_runs,
    pool_sampler,
    posterior_of,
    recorded_sampler,
    winner_of,
)
from refinegraph.models import PoolModel, ScriptedModel

keys_strategy = st.lists(st.sampled_from(["a", "b", "c", None]), min_size=0, max_size=24)
recorded_strategy = st.lists(keys_strategy, min_size=1, max_size=8)


def watched(recorded: dict[str, list], calls: list) -> object:
    """A recorded sampler that logs every (question, n, first_index) it is asked."""
    inner = recorded_sampler(recorded)

    async def sample(question: str, n: int, first_index: int) -> list:
        calls.append((question, n, first_index))
        return await inner(question, n, first_index)

    return sample


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lists=recorded_strategy, total=st.integers(0, 200), initial=st.integers(0, 4), batch=st.integers(1, 3),
       cap=st.integers(1, 30), threshold=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
async def test_allocation_respects_budget_caps_and_settled_questions(lists, total, initial, batch, cap, threshold):
    recorded = {f"q{i}": keys for i, keys in enumerate(lists)}
    calls: list = []
    result = await allocate(list(recorded), total_samples=total, sampler=watched(recorded, calls), initial=initial,
                            batch=batch, threshold=threshold, max_per_question=cap)
    assert result.used <= total
    for q in result.questions:
        assert q.used <= min(cap, len(recorded[q.question]))
        assert q.keys == recorded[q.question][:q.used]  # taken from the front, in recorded order
        assert q.answer == winner_of(q.keys)
    first = min(initial, cap)
    for question, n, first_index in calls:
        assert first_index + n <= cap
        if first_index >= first:  # after the initial round: only unsettled questions are sampled
            assert posterior_of(recorded[question][:first_index]) < threshold
    if result.stop_reason == "settled":
        assert all(q.settled for q in result.questions)
    if result.stop_reason == "budget":
        assert result.used == total


@settings(max_examples=100, deadline=None)
@given(lists=recorded_strategy)
async def test_with_budget_for_everything_and_no_early_stop_it_is_sc_at_all(lists):
    recorded = {f"q{i}": keys for i, keys in enumerate(lists)}
    result = await allocate(list(recorded), total_samples=sum(map(len, lists)), sampler=recorded_sampler(recorded),
                            threshold=1.0, max_per_question=max(map(len, lists)))
    assert result.answers == [winner_of(keys) for keys in lists]
    assert [q.used for q in result.questions] == [len(keys) for keys in lists]


@settings(max_examples=100, deadline=None)
@given(lists=recorded_strategy, threshold=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
async def test_with_budget_for_everything_it_is_per_question_adaptive_batch_one(lists, threshold):
    """Initial 2 then 1 at a time until settled: the adaptive rule with batch 1 (one sample
    never settles above 0.75), whatever order the questions are served in."""
    recorded = {f"q{i}": keys for i, keys in enumerate(lists)}
    result = await allocate(list(recorded), total_samples=10_000, sampler=recorded_sampler(recorded),
                            threshold=threshold, max_per_question=None)
    expected = [adaptive(keys, batch_size=1, threshold=threshold) for keys in lists]
    assert [q.used for q in result.questions] == [e.used for e in expected]
    assert result.answers == [e.answer for e in expected]


async def test_least_settled_question_gets_the_next_sample():
    recorded = {"easy": ["1"] * 10, "split": ["1", "2", "1", "1", "1", "1"], "lean": ["5", "5", "6", "5"]}
    result = await allocate(list(recorded), total_samples=10, sampler=recorded_sampler(recorded), batch=1)
    # after 2 each: easy (2,0)=0.875, split (1,1)=0.5, lean (2,0)=0.875: split until (4,1)=0.89 passes 0.875,
    # then easy and lean tie at 0.875 with 2 samples each: the earlier question
    assert [s["question"] for s in result.steps] == [1, 1, 1, 0]
    assert result.steps[0] == {"question": 1, "samples": 2, "posterior": 0.5, "n": 1}
    assert [q.used for q in result.questions] == [3, 5, 2]
    assert result.used == 10 and result.stop_reason == "budget"


async def test_budget_smaller_than_the_initial_round_is_dealt_in_order():
    recorded = {q: ["7"] * 5 for q in ("a", "b", "c")}
    calls: list = []
    result = await allocate(["a", "b", "c"], total_samples=4, sampler=watched(recorded, calls), initial=2)
    assert calls == [("a", 1, 0), ("b", 1, 0), ("c", 1, 0), ("a", 1, 1)]
    assert [q.used for q in result.questions] == [2, 1, 1]


async def test_settled_and_capped_questions_stop_allocation():
    recorded = {"same": ["3"] * 10, "mixed": ["1", "2"] * 5}
    result = await allocate(list(recorded), total_samples=100, sampler=recorded_sampler(recorded),
                            max_per_question=6)
    same, mixed = result.questions
    assert (same.used, same.settled, round(same.posterior, 5)) == (4, True, 0.96875)
    assert (mixed.used, mixed.settled, mixed.answer) == (6, False, "1")  # tie at 3-3: the first sampled wins
    assert result.stop_reason == "capped" and result.used == 10


async def test_a_sampler_that_runs_dry_caps_its_question():
    recorded = {"short": ["1", "2", "3"], "long": ["4"] * 8}
    result = await allocate(list(recorded), total_samples=50, sampler=recorded_sampler(recorded))
    assert result.questions[0].exhausted and result.questions[0].used == 3
    assert result.questions[1].used == 4 and result.questions[1].settled
    assert result.stop_reason == "capped"


async def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        await allocate(["q"], total_samples=1, sampler=recorded_sampler({"q": []}), threshold=0.4)


def test_adaptive_rule_on_recorded_lists():
    unanimous = ["12"] * 10
    assert adaptive(unanimous, batch_size=1).used == 4
    assert adaptive(unanimous, batch_size=2).used == 4
    assert adaptive(unanimous, batch_size=3).used == 6  # 3 gives 0.9375 < 0.95, so a second batch
    out = adaptive(unanimous, batch_size=1)
    assert (out.answer, out.reason, out.posterior) == ("12", "confident", 0.96875)
    split = ["1", "2", "1", "1", "2", "1", "1", "1", "1", "1"]
    out = adaptive(split, batch_size=2, threshold=0.95)
    assert (out.used, out.answer, out.reason) == (10, "1", "confident")  # 8-2: P = 0.9673
    capped = adaptive(split, batch_size=2, max_n=6)
    assert (capped.used, capped.answer, capped.reason) == (6, "1", "max_n")
    nothing = adaptive([None] * 5, batch_size=2)
    assert (nothing.used, nothing.answer, nothing.reason) == (5, None, "max_n")
    assert adaptive([], batch_size=2).used == 0


async def test_allocation_through_traced_self_consistency_runs(store):
    """The default path: each batch is a traced self-consistency run with its own seed."""
    answers = {"What is 2+2?": ["4", "4", "4", "4", "4"], "What is 3+5?": ["8", "9", "8", "9", "8", "8", "8", "8"]}
    served = {q: 0 for q in answers}

    def respond(messages):
        question = next(q for q in answers if q in messages[-1]["content"])
        served[question] += 1
        return f"So the answer is {answers[question][served[question] - 1]}."

    model = ScriptedModel(respond, name="local")
    result = await allocate_runs(list(answers), total_samples=12, params={"seed": 100, "max_tokens": 64},
                                 models={"local": model}, store=store, max_per_question=8)
    easy, hard = result.questions
    assert (easy.used, easy.answer, easy.settled) == (4, "4", True)
    assert (hard.used, hard.answer) == (8, "8")  # 8 samples 6-2: posterior 0.91 < 0.95, capped at 8
    assert result.used == 12 and len(easy.run_ids) == 3 and len(hard.run_ids) == 7
    seeds = [store.events(r, types={"llm_call"})[0]["params"]["seed"] for r in hard.run_ids]
    assert seeds == [100, 102, 103, 104, 105, 106, 107]
    votes = store.events(hard.run_ids[-1], types={"vote"})
    assert votes and votes[0]["winner"] == "8"


def _mini_pool(path: Path, rows: dict[str, list[str]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, (question, texts) in enumerate(rows.items()):
            f.write(json.dumps({"id": f"t-{i}", "task": "date", "question": question, "gold": texts[0],
                                "samples": {"m/x": texts}}) + "\n")
    return path


async def test_pool_model_sampler_and_traced_runs_match_the_offline_replay(tmp_path, store):
    rows = {"When was day one?": ["01/02/2020", "01/03/2020", "01/02/2020", "01/02/2020", "01/02/2020"],
            "When was day two?": ["03/04/2021"] * 6,
            "When was day three?": ["05/06/2022", "05/07/2022", "05/07/2022", "05/06/2022", "05/07/2022"]}
    path = _mini_pool(tmp_path / "mini_date.jsonl", rows)
    from refinegraph.tools.answers import extract_date
    recorded = {q: [extract_date(t) for t in texts] for q, texts in rows.items()}
    offline = await allocate(list(rows), total_samples=13, sampler=recorded_sampler(recorded))
    via_pool = await allocate(list(rows), total_samples=13, sampler=pool_sampler(PoolModel("p", path, ["m/x"]), "date"))
    traced = await allocate_runs(list(rows), total_samples=13, params={"answer": "date"},
                                 models={"local": PoolModel("local", path, ["m/x"])}, store=store)
    for other in (via_pool, traced):
        assert [q.used for q in other.questions] == [q.used for q in offline.questions]
        assert other.answers == offline.answers
    assert offline.answers == ["01/02/2020", "03/04/2021", "05/07/2022"]


def test_bench_allocation_on_the_date_pool(tmp_path, pools):
    pool = pools / "date_faithfulcot.jsonl"
    result = CliRunner().invoke(app, ["bench", "allocation", "--pool", str(pool), "--source",
                                      "code-davinci-002/ltm-x40", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["answer"] == "date" and report["questions"] == 359 and report["sc_total"] == 14360
    rows = {r["method"]: r for r in report["methods"]}
    figures = {name: (r["total"], r["agree"], r["correct"]) for name, r in rows.items()}
    assert figures == {"SC@all": (14360, 359, 290), "adaptive b=1": (1531, 358, 290), "adaptive b=2": (1536, 358, 290),
                       "allocation /4": (1531, 358, 290), "allocation /7": (1531, 358, 290),
                       "allocation /10": (1436, 358, 290), "allocation /15": (957, 357, 289),
                       "allocation /20": (718, 354, 290)}
    assert rows["allocation /7"]["goal_met"] and not rows["allocation /20"]["goal_met"]
    assert "MET by" in result.output
    assert "MET by" in (tmp_path / "report.md").read_text()


def test_bench_allocation_needs_a_pool_or_a_recording(tmp_path):
    result = CliRunner().invoke(app, ["bench", "allocation", "--out", str(tmp_path)])
    assert result.exit_code == 2


@pytest.mark.local
def test_bench_allocation_records_on_the_embedded_model(tmp_path):
    result = CliRunner().invoke(app, ["bench", "allocation", "--record", "2", "--samples", "4", "-p",
                                      "max_tokens=48", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "gsm8k_local_sc4.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["id"] for e in entries] == ["gsm8k-0", "gsm8k-1"] and entries[0]["gold"] == "18"
    assert all(len(e["samples"]["local/sc4"]) == 4 for e in entries)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sc_total"] == 8 and report["record"]["errors"] == 0 and len(report["record"]["run_ids"]) == 2
