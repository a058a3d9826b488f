"""Self-Refine's decisions, on a scripted model (a test double) so each path is forced."""

from __future__ import annotations

import pytest

from refinegraph import Budget, run
from refinegraph.trace.verify import verify_run

from conftest import scripted_by_role, verdict
from tests_support import critiques, event_types


async def run_scripted(store, critic_replies, params=None, budget=None, **model_kwargs):
    model = scripted_by_role(critic_replies, **model_kwargs)
    result = await run("self-refine", "Explain why the sky is blue.", store=store, models={"local": model},
                       params=params, budget=budget, checkpoint=False)
    return result, model


async def test_critic_done_stops_at_once(store):
    result, model = await run_scripted(store, [verdict(9, done=True)])
    assert result.stop_reason == "done"
    assert result.answer == "solver answer 1"
    assert model.counters == {"solver": 1, "critic": 1, "refiner": 0}
    assert verify_run(store, result.run_id).ok


async def test_improving_scores_refine_until_done(store):
    result, model = await run_scripted(store, [verdict(4), verdict(6), verdict(9, done=True)])
    assert result.stop_reason == "done"
    assert result.answer == "refiner answer 2"
    assert model.counters == {"solver": 1, "critic": 3, "refiner": 2}
    assert [c["score"] for c in critiques(store, result.run_id)] == [4.0, 6.0, 9.0]
    assert event_types(store, result.run_id).count("refine") == 2


async def test_no_improvement_keeps_the_original(store):
    result, _ = await run_scripted(store, [verdict(7), verdict(5)])
    assert result.stop_reason == "no_improvement"
    assert result.answer == "solver answer 1"
    stop = store.events(result.run_id, types={"stop"})[0]
    assert stop["chosen"] == 0 and stop["score"] == 7.0


async def test_equal_score_is_no_improvement(store):
    result, _ = await run_scripted(store, [verdict(6), verdict(6)])
    assert result.stop_reason == "no_improvement" and result.answer == "solver answer 1"


async def test_max_iterations_caps_the_loop(store):
    result, model = await run_scripted(store, [verdict(2), verdict(3), verdict(4)], params={"max_iterations": 2})
    assert result.stop_reason == "max_iterations"
    assert model.counters["refiner"] == 2
    assert result.answer == "refiner answer 2"


async def test_malformed_critic_output_is_a_recorded_fallback(store):
    result, _model = await run_scripted(store, ["I think it is quite good!!", verdict(8, done=True)])
    assert result.fallbacks == {"critic_unparseable": 1}
    fallback = store.events(result.run_id, types={"fallback"})[0]
    assert fallback["kind"] == "critic_unparseable" and "quite good" in fallback["detail"]
    assert [c["parsed_with"] for c in critiques(store, result.run_id)] == ["fallback", "json_schema"]
    # The unscored original loses to the scored revision.
    assert result.answer == "refiner answer 1" and result.stop_reason == "done"


async def test_tolerant_parsing_when_the_backend_has_no_json_schema(store):
    reply = "Here is my review:\n```json\n{'correctness': 9, 'completeness': 9, 'clarity': 9, " \
            "'score': 9, 'verdict': 'DONE', 'edits': [],}\n```"
    result, _model = await run_scripted(store, [reply], supports_json_schema=False)
    assert [c["parsed_with"] for c in critiques(store, result.run_id)] == ["tolerant"]
    assert result.stop_reason == "done" and result.fallbacks == {}
    call = store.events(result.run_id, types={"llm_call"})[1]
    assert call["role"] == "critic" and call["params"]["response_format"] is None


async def test_critic_is_asked_for_json_schema_when_supported(store):
    result, _ = await run_scripted(store, [verdict(9, done=True)])
    call = store.events(result.run_id, types={"llm_call"})[1]
    assert call["params"]["response_format"]["type"] == "json_schema"
    schema = call["params"]["response_format"]["json_schema"]["schema"]
    assert set(schema["required"]) == {"correctness", "completeness", "clarity", "score", "verdict", "edits"}


async def test_tiny_call_budget_stops_with_the_best_answer_so_far(store):
    result, model = await run_scripted(store, [verdict(4), verdict(6)], budget=Budget(max_calls=3))
    assert result.stop_reason == "budget"
    # The refinement was never scored, so the scored original is the best so far.
    assert result.answer == "solver answer 1"
    assert model.counters == {"solver": 1, "critic": 1, "refiner": 1}
    budget = store.events(result.run_id, types={"budget"})
    assert len(budget) == 1 and budget[0]["reason"] == "calls"


async def test_budget_refusing_the_first_call_still_answers(store):
    result, _model = await run_scripted(store, [], budget=Budget(max_tokens=5))
    assert result.stop_reason == "budget" and result.answer is None and result.model_calls == 0
    assert verify_run(store, result.run_id).ok


@pytest.mark.parametrize("graph", ["nope", "self_refine"])
async def test_unknown_graph_lists_the_known_ones(store, graph):
    from refinegraph.registry import UnknownGraph
    with pytest.raises(UnknownGraph, match="known graphs: .*self-refine"):
        await run(graph, "x", store=store)
