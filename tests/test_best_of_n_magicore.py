"""Best-of-N and MAgICoRe decisions, and the reward scorers.

Control flow runs on a scripted model (a TEST DOUBLE) that answers each role from its
own script; the reward-model client talks to a tiny loopback HTTP server (no network);
the `local` tests run the real embedded model.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refinegraph import Budget, run
from refinegraph.cache import ReplayCache
from refinegraph.config import Config, ConfigError, ModelSpec, RetryPolicy
from refinegraph.context import RunContext
from refinegraph.models import ScriptedModel
from refinegraph.models.reward_server import RewardServerModel
from refinegraph.runner import replay
from refinegraph.tools.reward import (
    JudgeScorer,
    RewardModelScorer,
    best_index,
    read_pooling_output,
    split_steps,
)
from refinegraph.trace.store import NullWriter
from refinegraph.trace.verify import verify_run

ANSWER = re.compile(r"answer is (-?\d+)")


def role_of(messages) -> str:
    system = messages[0]["content"]
    if "strict grader" in system:
        return "reward"
    if "reviewer of math solutions" in system:
        return "reviewer"
    if "correct a solution" in system:
        return "refiner"
    return "solver"


def judge_reply(score: float) -> str:
    return json.dumps({"steps": [score], "score": score})


def scripted(solutions, judge, refined=None):
    """Solver texts in order; `judge(answer) -> reply` by the judged solution's answer;
    refiner texts in order (the last repeats)."""
    counters = {"solver": 0, "reward": 0, "reviewer": 0, "refiner": 0}
    refined = refined or ["The answer is 0."]

    def respond(messages):
        role = role_of(messages)
        counters[role] += 1
        if role == "solver":
            return solutions[counters["solver"] - 1]
        if role == "reward":
            found = ANSWER.search(messages[-1]["content"])
            return judge(found.group(1) if found else None)
        if role == "reviewer":
            return "Step 1 is wrong: recompute it."
        return refined[min(counters["refiner"], len(refined)) - 1]

    model = ScriptedModel(respond, name="local")
    model.counters = counters
    return model


def by_answer(table: dict[str, float]):
    return lambda answer: judge_reply(table[answer]) if isinstance(table.get(answer), (int, float)) \
        else table.get(answer, "no idea")


def sols(*answers) -> list[str]:
    return [f"Compute it.\nThe answer is {a}." for a in answers]


async def run_bon(store, solutions, judge, params=None, budget=None, config=None):
    model = scripted(solutions, judge)
    params = {"n": len(solutions), **(params or {})}
    result = await run("best-of-n", "What is it?", store=store, models={"local": model}, params=params,
                       budget=budget, config=config, checkpoint=False)
    return result, model


# -- Best-of-N -------------------------------------------------------------------------------


async def test_best_of_n_picks_the_highest_score(store):
    result, model = await run_bon(store, sols(1, 2, 3), by_answer({"1": 3, "2": 9, "3": 5}))
    assert result.answer == "2" and result.stop_reason == "done"
    assert result.state["solution"] == sols(2)[0]
    scores = store.events(result.run_id, types={"score"})
    assert [(s["candidate"], s["outcome"]) for s in scores] == [(0, 0.3), (1, 0.9), (2, 0.5)]
    assert {s["scorer"] for s in scores} == {"judge:local"} and scores[0]["parsed_with"] == "json_schema"
    stop = store.events(result.run_id, types={"stop"})[0]
    assert stop["chosen"] == 1 and stop["score"] == 0.9
    assert model.counters == {"solver": 3, "reward": 3, "reviewer": 0, "refiner": 0}  # per sample
    assert verify_run(store, result.run_id).ok
    call = [c for c in store.events(result.run_id, types={"llm_call"}) if c["role"] == "reward"][0]
    assert call["params"]["temperature"] == 0.0 and call["params"]["response_format"]["type"] == "json_schema"


async def test_best_of_n_tie_goes_to_the_earliest(store):
    result, _ = await run_bon(store, sols(1, 2, 3), by_answer({"1": 4, "2": 8, "3": 8}))
    assert result.answer == "2"
    assert store.events(result.run_id, types={"stop"})[0]["chosen"] == 1


async def test_best_of_n_unparseable_judge_is_a_recorded_fallback(store):
    result, _ = await run_bon(store, sols(1, 2, 3), by_answer({"1": 2, "2": "It is great!!", "3": 5}))
    assert result.fallbacks == {"reward_unparseable": 1}
    fallback = store.events(result.run_id, types={"fallback"})[0]
    assert fallback["kind"] == "reward_unparseable" and "great" in fallback["detail"]
    scores = store.events(result.run_id, types={"score"})
    assert [s["parsed_with"] for s in scores] == ["json_schema", "fallback", "json_schema"]
    assert scores[1]["outcome"] is None
    assert result.answer == "3"  # the unscored sample loses even to a low score


async def test_best_of_n_with_no_scores_falls_back_to_majority(store):
    result, _ = await run_bon(store, sols(5, 6, 6), lambda answer: "unreadable")
    assert result.fallbacks == {"reward_unparseable": 2, "no_scores": 1}  # equal texts judged once
    assert result.answer == "6"
    assert store.events(result.run_id, types={"vote"})[0]["winner"] == "6"
    assert store.events(result.run_id, types={"stop"})[0]["chosen"] == 1


async def test_best_of_n_budget_mid_scoring_keeps_the_best_so_far(store):
    # calls: sampler 1, judge 2, then the 3rd judge call is refused
    result, model = await run_bon(store, sols(1, 2, 3, 4), by_answer({"1": 3, "2": 6, "3": 10, "4": 10}),
                                  budget=Budget(max_calls=3))
    assert result.stop_reason == "budget" and result.answer == "2"
    assert len(store.events(result.run_id, types={"score"})) == 2
    assert store.events(result.run_id, types={"budget"})[0]["reason"] == "calls"
    stop = store.events(result.run_id, types={"stop"})[0]
    assert stop == {**stop, "reason": "budget", "chosen": 1, "score": 0.6}
    assert model.counters["reward"] == 2


async def test_best_of_n_duplicate_texts_are_judged_once(store):
    result, model = await run_bon(store, sols(7, 7, 8), by_answer({"7": 6, "8": 6}))
    assert model.counters["reward"] == 2
    assert [s["outcome"] for s in store.events(result.run_id, types={"score"})] == [0.6, 0.6, 0.6]
    assert result.answer == "7"


async def test_best_of_n_replay_makes_no_calls(store):
    result, _ = await run_bon(store, sols(1, 2, 3), by_answer({"1": 3, "2": 9, "3": 5}))
    again = await replay(result.run_id, store=store)
    assert again.model_calls == 0 and again.decisions_match and again.answer == "2"


async def test_best_of_n_bad_params_are_a_clear_error(store):
    with pytest.raises(ConfigError, match="nope"):
        await run("best-of-n", "x", store=store, params={"nope": 1})


@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=12))
def test_best_index_is_the_earliest_maximum(outcomes):
    scored = [(o, i) for i, o in enumerate(outcomes) if o is not None]
    expected = None if not scored else min(scored, key=lambda p: (-p[0], p[1]))[1]
    assert best_index(outcomes) == expected


def test_split_steps_caps_the_step_count():
    assert split_steps("a\n\nb\n c ") == ["a", "b", "c"]
    steps = split_steps("\n".join(str(i) for i in range(30)), max_steps=12)
    assert len(steps) <= 12 and steps[0].startswith("0 1")


# -- reward-model server ---------------------------------------------------------------------


class PoolingServer:
    """A loopback stand-in for `vllm serve --runner pooling`: a logit by the input's answer."""

    def __init__(self, rewards: dict[str, float], delay: float = 0.0):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **body})
                time.sleep(delay)
                found = ANSWER.search(body["input"])
                value = rewards.get(found.group(1) if found else "", -5.0)
                data = json.dumps({"data": [{"index": 0, "object": "pooling", "data": [value]}],
                                   "usage": {"prompt_tokens": 11, "total_tokens": 11}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def rm_config(url: str, timeout: float = 5.0) -> Config:
    return Config(models={"local": ModelSpec(),
                          "rm": ModelSpec(backend="reward", base_url=url, model="acme/rm", timeout_s=timeout,
                                          retry=RetryPolicy(max_retries=0))})


async def test_reward_model_server_scores_and_replays_without_it(store):
    with PoolingServer({"1": -1.0, "2": 2.0, "3": 0.5}) as server:
        result, model = await run_bon(store, sols(1, 2, 3), by_answer({}), params={"reward_model": "rm"},
                                      config=rm_config(server.url))
    assert result.answer == "2" and result.fallbacks == {}
    assert model.counters["reward"] == 0  # no judge when a reward model is configured
    assert [r["path"] for r in server.requests] == ["/pooling"] * 3
    assert server.requests[0]["model"] == "acme/rm" and "The answer is 1." in server.requests[0]["input"]
    scores = store.events(result.run_id, types={"score"})
    assert {s["scorer"] for s in scores} == {"reward_model:rm"}
    assert [s["outcome"] for s in scores] == pytest.approx([0.268941, 0.880797, 0.622459], abs=1e-6)
    calls = [c for c in store.events(result.run_id, types={"llm_call"}) if c["backend"] == "reward"]
    assert len(calls) == 3 and calls[0]["prompt_tokens"] == 11
    assert result.model_calls == 4 and result.usage["prompt_tokens"] >= 33
    # the server is gone: a replay must not need it
    again = await replay(result.run_id, store=store)
    assert again.model_calls == 0 and again.decisions_match and again.answer == "2"


async def test_dead_reward_server_is_a_recorded_fallback_not_a_hang(store):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    result, _ = await run_bon(store, sols(1, 2), by_answer({}), params={"reward_model": "rm"},
                              config=rm_config(f"http://127.0.0.1:{port}/v1", timeout=2.0))
    assert time.monotonic() - started < 30
    assert result.fallbacks == {"reward_model_error": 2, "no_scores": 1}
    assert result.answer == "1"
    assert all(s["outcome"] is None for s in store.events(result.run_id, types={"score"}))
    again = await replay(result.run_id, store=store)
    assert again.model_calls == 0 and again.decisions_match


async def test_unconfigured_reward_model_is_a_clear_error(store):
    from refinegraph.config import ConfigError
    with pytest.raises(ConfigError, match="unknown model 'missing'"):
        await run_bon(store, sols(1), by_answer({}), params={"reward_model": "missing"})


def _bare_context(**kwargs) -> RunContext:
    return RunContext(run_id="t", models={"local": ScriptedModel(["x"], name="local")}, roles={"default": "local"},
                      writer=NullWriter("t"), **kwargs)


def _reward_context(handler, **kwargs) -> RunContext:
    ctx = _bare_context(config=Config(models={"local": ModelSpec(),
                                              "rm": ModelSpec(backend="reward", retry=RetryPolicy(max_retries=1,
                                                                                                   initial_wait_s=0))}),
                        **kwargs)
    ctx.models["rm"] = RewardServerModel("rm", "http://rm.invalid/v1", "m", transport=httpx.MockTransport(handler))
    return ctx


async def test_reward_model_timeout_via_mock_transport_is_a_retried_then_recorded_fallback():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    ctx = _reward_context(handler)
    scores = await RewardModelScorer("rm").score(ctx, "task", "The answer is 1.")
    assert scores.outcome is None and scores.parsed_with == "fallback"
    assert ctx.fallbacks == {"reward_model_error": 1} and ctx.retries == 1


async def test_reward_model_malformed_reply_is_a_recorded_fallback():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/pooling"
        return httpx.Response(200, json={"data": [{"data": {"not": "a reward"}}]})

    ctx = _reward_context(handler)
    scores = await RewardModelScorer("rm").score(ctx, "task", "The answer is 1.")
    assert scores.outcome is None and ctx.fallbacks == {"reward_model_unparseable": 1}


async def test_reward_model_refuses_to_call_in_a_replay():
    from refinegraph.context import ReplayMiss

    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not be reached
        raise AssertionError("a replay called the reward server")

    ctx = _reward_context(handler, replay_only=True, cache=ReplayCache())
    with pytest.raises(ReplayMiss):
        await RewardModelScorer("rm").score(ctx, "task", "The answer is 1.")


async def test_judge_scorer_clamps_and_normalizes():
    ctx = _bare_context()
    ctx.models["local"] = ScriptedModel(['{"steps": [{"score": 12}, 5], "score": -3}'], name="local")
    scores = await JudgeScorer().score(ctx, "t", "a\nb")
    assert scores.outcome == 0.0 and scores.steps == [1.0, 0.5] and scores.scorer == "judge:local"


def test_pooling_output_shapes():
    assert read_pooling_output([0.0]) == (0.5, [])
    assert read_pooling_output(0.7, "identity") == (0.7, [])
    outcome, steps = read_pooling_output([[0.2, 0.8], [0.9, 0.1]])
    assert steps == [0.8, 0.1] and outcome == 0.1
    assert read_pooling_output([[1.0], [-1.0], [3.0]])[0] == pytest.approx(0.952574, abs=1e-6)
    logits = read_pooling_output([[0.0, 0.0]])[1]
    assert logits == [0.5]
    from refinegraph.tools.reward import RewardOutputError
    with pytest.raises(RewardOutputError):
        read_pooling_output([[1, 2, 3]])
    with pytest.raises(RewardOutputError):
        read_pooling_output({"x": 1})


# -- MAgICoRe ------------------------------------------------------------------------------


async def run_magicore(store, solutions, judge, refined=None, params=None, budget=None):
    model = scripted(solutions, judge, refined)
    params = {"k": len(solutions), **(params or {})}
    result = await run("magicore", "What is it?", store=store, models={"local": model}, params=params,
                       budget=budget, checkpoint=False)
    return result, model


async def test_magicore_easy_path_votes_without_refining(store):
    result, model = await run_magicore(store, sols(4, 4, 4, 5), by_answer({"4": 9, "5": 2}))
    assert result.answer == "4" and result.stop_reason == "easy"
    assert model.counters["reviewer"] == 0 and model.counters["refiner"] == 0
    [difficulty] = store.events(result.run_id, types={"difficulty"})
    assert difficulty["label"] == "easy" and difficulty["iteration"] == 0
    assert difficulty["majority_reward"] == 0.9 and difficulty["confidence"] == pytest.approx(2.7 / 2.9, abs=1e-5)
    assert difficulty["thresholds"] == {"reward": 0.6, "confidence": 0.6}
    [vote] = store.events(result.run_id, types={"vote"})
    assert vote["groups"][0]["weight"] == pytest.approx(2.7) and vote["groups"][1]["members"] == [3]
    assert store.events(result.run_id, types={"refine"}) == []
    assert len(store.events(result.run_id, types={"score"})) == 4 and model.counters["reward"] == 2


async def test_magicore_hard_path_refines_then_stops_easy(store):
    result, model = await run_magicore(store, sols(1, 2, 3, 1), by_answer({"1": 2, "2": 2, "3": 2, "7": 9}),
                                       refined=["Recomputed.\nThe answer is 7."])
    labels = [(d["label"], d["iteration"]) for d in store.events(result.run_id, types={"difficulty"})]
    assert labels == [("hard", 0), ("easy", 1)]
    first = store.events(result.run_id, types={"difficulty"})[0]
    assert first["majority_reward"] == 0.2 and first["confidence"] == 0.5
    refines = store.events(result.run_id, types={"refine"})
    assert [(r["iteration"], r["from_candidate"], r["to_candidate"]) for r in refines] == [(1, 0, 4), (1, 1, 5)]
    assert model.counters["reviewer"] == 2 and model.counters["refiner"] == 2
    assert result.answer == "7" and result.stop_reason == "easy"
    vote = store.events(result.run_id, types={"vote"})[0]
    assert vote["groups"][0]["members"] == [4, 5]
    # the reviewer saw the step scores, the refiner only the task, solution and feedback
    calls = store.events(result.run_id, types={"llm_call"})
    reviewer_request = store.get_blob([c for c in calls if c["role"] == "reviewer"][0]["request_blob"])
    assert "[score 0.20]" in reviewer_request["messages"][-1]["content"]
    refiner_request = store.get_blob([c for c in calls if c["role"] == "refiner"][0]["request_blob"])
    assert "recompute it" in refiner_request["messages"][-1]["content"]
    assert "score" not in refiner_request["messages"][-1]["content"]
    again = await replay(result.run_id, store=store)
    assert again.model_calls == 0 and again.decisions_match and again.answer == "7"


async def test_magicore_hard_stays_hard_until_max_iterations(store):
    result, model = await run_magicore(store, sols(1, 2, 3, 1), by_answer({"1": 2, "2": 2, "3": 2, "9": 1}),
                                       refined=["The answer is 9."], params={"max_iterations": 2, "refine_top": 1})
    assert result.stop_reason == "max_iterations"
    labels = [(d["label"], d["iteration"]) for d in store.events(result.run_id, types={"difficulty"})]
    assert labels == [("hard", 0), ("hard", 1), ("hard", 2)]
    refines = store.events(result.run_id, types={"refine"})
    # each round a different solution (a version is refined once); worse revisions are not kept
    assert [(r["from_candidate"], r["to_candidate"]) for r in refines] == [(0, 4), (1, 5)]
    assert model.counters["refiner"] == 2
    assert result.answer == "1"
    assert result.state["vote"]["groups"][0]["members"] == [0, 3]


async def test_magicore_budget_during_refinement_votes_over_what_exists(store):
    # calls: solver 1 + judge 3 (distinct answers 1,2,3) + reviewer 2 = 6; the refiner is refused
    result, model = await run_magicore(store, sols(1, 2, 3, 1), by_answer({"1": 2, "2": 2, "3": 2}),
                                       budget=Budget(max_calls=6))
    assert result.stop_reason == "budget" and result.answer == "1"
    assert model.counters["refiner"] == 0 and store.events(result.run_id, types={"refine"}) == []
    assert store.events(result.run_id, types={"stop"})[0]["reason"] == "budget"
    again = await replay(result.run_id, store=store)
    assert again.model_calls == 0 and again.decisions_match and again.stop_reason == "budget"


async def test_magicore_easy_replay(store):
    result, _ = await run_magicore(store, sols(4, 4, 5), by_answer({"4": 9, "5": 2}))
    again = await replay(result.run_id, store=store)
    assert again.model_calls == 0 and again.decisions_match and again.answer == "4"


# -- the real embedded model -----------------------------------------------------------------

TASK = "Tom has 3 apples and buys 4 more. How many apples does he have?"


@pytest.mark.local
async def test_best_of_n_on_the_local_model(store):
    result = await run("best-of-n", TASK, store=store, params={"n": 3, "max_tokens": 64, "judge_max_tokens": 96},
                       checkpoint=False)
    assert len(store.events(result.run_id, types={"score"})) == 3
    [stop] = store.events(result.run_id, types={"stop"})
    assert stop["chosen"] in (0, 1, 2)
    assert verify_run(store, result.run_id).ok
    again = await replay(result.run_id, store=store)
    assert again.model_calls == 0 and again.decisions_match


@pytest.mark.local
async def test_magicore_on_the_local_model(store):
    result = await run("magicore", TASK, store=store,
                       params={"k": 3, "max_tokens": 64, "judge_max_tokens": 96, "max_iterations": 1,
                               "refine_top": 1, "reviewer_max_tokens": 64, "refiner_max_tokens": 64},
                       checkpoint=False)
    scores = store.events(result.run_id, types={"score"})
    difficulties = store.events(result.run_id, types={"difficulty"})
    refines = store.events(result.run_id, types={"refine"})
    assert len(scores) == 3 + len(refines)
    assert 1 <= len(difficulties) <= 2 and len(refines) <= 1
    assert (difficulties[0]["label"] == "hard") == bool(refines)
    assert len(store.events(result.run_id, types={"stop"})) == 1
    assert verify_run(store, result.run_id).ok
    again = await replay(result.run_id, store=store)
    assert again.model_calls == 0 and again.decisions_match
