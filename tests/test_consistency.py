"""greedy, self-consistency and adaptive-sc: votes, stopping, budget, replay, the real model."""

from __future__ import annotations

import itertools

import pytest

from refinegraph.budget import Budget
from refinegraph.config import ConfigError
from refinegraph.models import ScriptedModel
from refinegraph.runner import replay, run
from refinegraph.trace.verify import verify_run

QUESTION = "Tom has 3 boxes of 4 pens. How many pens does he have?"


def cycling(*texts: str) -> ScriptedModel:
    """A test double that answers each sample with the next of `texts`, round and round."""
    replies = itertools.cycle(texts)
    return ScriptedModel(lambda messages: next(replies), name="local")


async def test_self_consistency_votes_on_meanings_and_breaks_ties_by_first_seen(store):
    model = ScriptedModel(["Thus 3*4 = 12. The answer is 12.", "The answer is 7", "So #### 12.00",
                           "I do not know", "The answer is $7"], name="local")
    result = await run("self-consistency", QUESTION, params={"n": 5}, models={"local": model}, store=store)
    assert result.answer == "12" and result.stop_reason == "done" and result.model_calls == 1
    assert len(model.calls) == 1  # all five samples in one request
    (vote,) = store.events(result.run_id, types={"vote"})
    assert [(g["key"], g["members"]) for g in vote["groups"]] == [("12", [0, 2]), ("7", [1, 4])]
    assert vote["tie"] is True and vote["failed"] == [3] and vote["agreement"] == 0.4
    (stop,) = store.events(result.run_id, types={"stop"})
    assert stop["chosen"] == 0 and result.state["solution"].startswith("Thus 3*4")


async def test_greedy_is_one_sample_at_temperature_zero(store):
    model = ScriptedModel(["The answer is 12."], name="local")
    result = await run("greedy", QUESTION, models={"local": model}, store=store)
    assert result.answer == "12"
    (call,) = store.events(result.run_id, types={"llm_call"})
    assert call["params"]["temperature"] == 0.0 and call["params"]["n"] == 1
    with pytest.raises(ConfigError, match="n"):
        await run("greedy", QUESTION, params={"n": 4}, models={"local": model}, store=store)


async def test_unknown_answer_type_is_a_clear_error(store):
    with pytest.raises(ConfigError, match="unknown answer type 'money'"):
        await run("self-consistency", QUESTION, params={"answer": "money"}, models={"local": cycling("1")},
                  store=store)


async def test_no_readable_answer_says_so(store):
    result = await run("self-consistency", QUESTION, params={"n": 3}, models={"local": cycling("no idea")},
                       store=store)
    assert result.answer is None and result.stop_reason == "no_answer"


async def test_adaptive_stops_when_the_posterior_is_confident(store):
    result = await run("adaptive-sc", QUESTION, params={"n": 16, "batch_size": 2},
                       models={"local": cycling("The answer is 12.")}, store=store)
    checks = store.events(result.run_id, types={"sampling_check"})
    # Beta rule: 2 agreeing samples give 7/8 < 0.95, 4 give 31/32 >= 0.95
    assert [(c["samples"], c["counts"], c["stop"]) for c in checks] == [(2, [2], False), (4, [4], True)]
    assert checks[-1]["posterior"] == pytest.approx(31 / 32) and checks[-1]["reason"] == "confident"
    assert result.answer == "12" and result.stop_reason == "confident" and result.model_calls == 2
    seeds = [c["params"]["seed"] for c in store.events(result.run_id, types={"llm_call"})]
    assert seeds == [0, 1]  # each batch its own seed


async def test_adaptive_stops_at_max_n_when_answers_keep_disagreeing(store):
    result = await run("adaptive-sc", QUESTION, params={"n": 6, "batch_size": 2},
                       models={"local": cycling("The answer is 12.", "The answer is 13.")}, store=store)
    checks = store.events(result.run_id, types={"sampling_check"})
    assert [c["samples"] for c in checks] == [2, 4, 6]
    assert checks[-1]["reason"] == "max_n" and result.stop_reason == "max_n"
    assert result.answer == "12"  # tie: the answer sampled first


async def test_esc_stops_at_the_first_unanimous_window(store):
    model = cycling("The answer is 1.", "The answer is 2.", "The answer is 5.", "The answer is 5.")
    result = await run("adaptive-sc", QUESTION, params={"n": 12, "batch_size": 2, "rule": "esc"},
                       models={"local": model}, store=store)
    checks = store.events(result.run_id, types={"sampling_check"})
    assert [c["stop"] for c in checks] == [False, True] and checks[-1]["rule"] == "esc"
    assert result.answer == "5"


async def test_budget_mid_graph_returns_the_vote_so_far(store):
    result = await run("adaptive-sc", QUESTION, params={"n": 16, "batch_size": 2},
                       models={"local": cycling("The answer is 12.", "The answer is 9.")},
                       budget=Budget(max_calls=1), store=store)
    assert result.stop_reason == "budget" and result.answer == "12" and result.model_calls == 1
    assert [e["reason"] for e in store.events(result.run_id, types={"budget"})] == ["calls"]
    assert verify_run(store, result.run_id).ok


@pytest.mark.parametrize(("graph", "params"), [("greedy", {}), ("self-consistency", {"n": 4}),
                                               ("adaptive-sc", {"n": 8})])
@pytest.mark.both_stores
async def test_replay_makes_no_model_call(store, graph, params):
    model = cycling("The answer is 12.", "The answer is 12.", "The answer is 3.")
    original = await run(graph, QUESTION, params=params, models={"local": model}, store=store)
    calls = len(model.calls)
    replayed = await replay(original.run_id, store=store)
    assert replayed.model_calls == 0 and len(model.calls) == calls
    assert replayed.decisions_match and replayed.answer == original.answer


@pytest.mark.local
@pytest.mark.parametrize(("graph", "params"), [("greedy", {}), ("self-consistency", {"n": 4}),
                                               ("adaptive-sc", {"n": 6, "batch_size": 2})])
async def test_on_the_embedded_model(store, graph, params):
    result = await run(graph, "What is 12 + 7?", params={**params, "max_tokens": 64}, store=store)
    assert verify_run(store, result.run_id).ok
    (vote,) = store.events(result.run_id, types={"vote"})
    samples = result.state["samples"]
    assert len(samples) == params.get("n", 1) or graph == "adaptive-sc"
    assert sum(g["votes"] for g in vote["groups"]) + len(vote["failed"]) == len(samples)
    if graph == "adaptive-sc":
        checks = store.events(result.run_id, types={"sampling_check"})
        assert checks and checks[-1]["stop"] and checks[-1]["samples"] == len(samples)
    calls = store.events(result.run_id, types={"llm_call"})
    assert sum(len(c["choice_tokens"]) for c in calls) == len(samples)
    assert result.usage["completion_tokens"] == sum(sum(c["choice_tokens"]) for c in calls)
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match


@pytest.mark.both_stores
async def test_replay_reports_the_recorded_cost(store):
    from refinegraph.config import Config, ModelSpec

    config = Config(models={"local": ModelSpec(price_input_per_mtok=1.0, price_output_per_mtok=4.0)})
    original = await run("self-consistency", QUESTION, params={"n": 3}, config=config,
                         models={"local": cycling("The answer is 12.")}, store=store)
    assert original.cost_usd and original.cost_usd > 0
    replayed = await replay(original.run_id, store=store)
    assert replayed.cost_usd == original.cost_usd and replayed.decisions_match
