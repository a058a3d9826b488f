"""SETS and ACAR: control flow on scripted models (a test double), routing properties, and
one run of each on the real embedded model."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refinegraph import Budget, Config, ModelSpec, replay, run
from refinegraph.config import ConfigError
from refinegraph.graphs.acar import choose_mode, sigma, uses_models
from refinegraph.models import ScriptedModel
from refinegraph.trace.verify import verify_run

TASK = "Tom has 3 apples and buys 2 more. How many apples does he have?"


def role_of(messages: list[dict[str, Any]]) -> str:
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    for marker, role in (("You check a solution", "verifier"), ("You correct a solution", "corrector"),
                         ("You are a judge", "judge"), ("careful problem solver", "solver")):
        if marker in system:
            return role
    raise AssertionError(f"unknown prompt: {system[:80]}")


def scripted(scripts: dict[str, list[str] | Callable[[], str]], name: str = "local", **kwargs) -> ScriptedModel:
    """Answers each role from its own queue (or function), counting calls per role."""
    queues = {role: list(s) if not callable(s) else s for role, s in scripts.items()}
    counters: dict[str, int] = {}

    def respond(messages: list[dict[str, Any]]) -> str:
        role = role_of(messages)
        counters[role] = counters.get(role, 0) + 1
        script = queues.get(role)
        if script is None:
            raise AssertionError(f"model {name!r} was not meant to play {role}")
        if callable(script):
            return script()
        if not script:
            raise AssertionError(f"model {name!r} ran out of {role} replies")
        return script.pop(0)

    model = ScriptedModel(respond, name=name, **kwargs)
    model.counters = counters  # type: ignore[attr-defined]
    return model


def ok(reason: str = "right") -> str:
    return json.dumps({"correct": True, "reason": reason})


def bad(reason: str = "wrong") -> str:
    return json.dumps({"correct": False, "reason": reason})


def ans(x: Any) -> str:
    return f"Some steps. The answer is {x}."


def events(store, run_id: str, kind: str) -> list[dict[str, Any]]:
    return store.events(run_id, types={kind})


# -- SETS ---------------------------------------------------------------------------------


async def run_sets(store, model, params, budget=None):
    return await run("sets", TASK, store=store, models={"local": model}, params=params, budget=budget)


async def test_sets_verdicts_and_corrections(store):
    model = scripted({"solver": [ans(5), ans(7)], "verifier": [ok(), bad("miscounted the apples"), ok()],
                      "corrector": [ans(5)]})
    result = await run_sets(store, model, {"m": 2, "r": 2})
    assert result.answer == "5" and result.stop_reason == "done"
    assert model.counters == {"solver": 2, "verifier": 3, "corrector": 1}
    verdicts = events(store, result.run_id, "verdict")
    assert [(v["subject"], v["correct"]) for v in verdicts] == [
        ("solution 0 round 0", True), ("solution 1 round 0", False), ("solution 1 round 1", True)]
    assert verdicts[1]["reason"] == "miscounted the apples"
    (refine,) = events(store, result.run_id, "refine")
    assert (refine["iteration"], refine["from_candidate"], refine["to_candidate"]) == (1, 1, 2)
    corrector_prompt = [m for m in model.calls if role_of(m) == "corrector"][0][-1]["content"]
    assert "miscounted the apples" in corrector_prompt and ans(7) in corrector_prompt
    vote = events(store, result.run_id, "vote")[0]
    assert vote["winner"] == "5" and vote["groups"][0]["members"] == [0, 1]
    assert verify_run(store, result.run_id).ok


async def test_sets_cap_r_holds_and_corrector_sees_only_the_latest(store):
    model = scripted({"solver": [ans(1)], "verifier": lambda: bad("still wrong"),
                      "corrector": [ans(2), ans(3)]})
    result = await run_sets(store, model, {"m": 1, "r": 2})
    assert model.counters == {"solver": 1, "verifier": 3, "corrector": 2}
    refines = events(store, result.run_id, "refine")
    assert [(r["iteration"], r["from_candidate"], r["to_candidate"]) for r in refines] == [(1, 0, 1), (2, 1, 2)]
    second = [m for m in model.calls if role_of(m) == "corrector"][1][-1]["content"]
    assert ans(2) in second and ans(1) not in second
    # nothing verified: every final solution counts, and the final one is the last correction
    assert result.answer == "3"


async def test_sets_r0_makes_no_corrections(store):
    model = scripted({"solver": [ans(1), ans(2)], "verifier": lambda: bad()})
    result = await run_sets(store, model, {"m": 2, "r": 0})
    assert model.counters == {"solver": 2, "verifier": 2}
    assert events(store, result.run_id, "refine") == []


async def test_sets_counts_only_verified_solutions(store):
    model = scripted({"solver": [ans(3), ans(3), ans(8)], "verifier": [bad(), bad(), ok()]})
    result = await run_sets(store, model, {"m": 3, "r": 0})
    assert result.answer == "8"
    vote = events(store, result.run_id, "vote")[0]
    assert vote["winner"] == "8"
    weights = {g["key"]: g["weight"] for g in vote["groups"]}
    assert weights == {"8": 1.0, "3": 0.0}
    assert events(store, result.run_id, "stop")[0]["chosen"] == 2


async def test_sets_counts_all_when_none_is_verified(store):
    model = scripted({"solver": [ans(3), ans(3), ans(8)], "verifier": lambda: bad()})
    result = await run_sets(store, model, {"m": 3, "r": 0})
    assert result.answer == "3"


async def test_sets_unparseable_verdict_is_a_fallback_and_not_verified(store):
    model = scripted({"solver": [ans(4), ans(9)], "verifier": ["looks fine to me!!", ok(), "hmm??", bad()],
                      "corrector": [ans(6), ans(9)]})
    result = await run_sets(store, model, {"m": 2, "r": 1})
    # each unreadable verdict is recorded, counts as not verified, and its solution is corrected (within r)
    assert result.fallbacks == {"verifier_unparseable": 2}
    assert model.counters == {"solver": 2, "verifier": 4, "corrector": 2}
    fallbacks = events(store, result.run_id, "fallback")
    assert fallbacks[0]["kind"] == "verifier_unparseable" and "looks fine" in fallbacks[0]["detail"]
    verdicts = events(store, result.run_id, "verdict")
    assert [v["correct"] for v in verdicts] == [None, True, None, False]
    corrector_prompt = [m for m in model.calls if role_of(m) == "corrector"][0][-1]["content"]
    assert "could not say" in corrector_prompt
    assert result.answer == "6"  # the only verified solution


async def test_sets_unparseable_solution_is_counted_when_none_verified(store):
    model = scripted({"solver": [ans(4), ans(4), ans(9)], "verifier": ["??", bad(), bad()]})
    result = await run_sets(store, model, {"m": 3, "r": 0})
    assert result.fallbacks == {"verifier_unparseable": 1}
    assert result.answer == "4"
    assert events(store, result.run_id, "vote")[0]["groups"][0]["members"] == [0, 1]


async def test_sets_replay_makes_no_calls(store):
    model = scripted({"solver": [ans(5), ans(7)], "verifier": [ok(), bad("no"), "junk", ],
                      "corrector": [ans(5)]})
    result = await run_sets(store, model, {"m": 2, "r": 1})
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match and replayed.answer_matches
    assert replayed.answer == result.answer == "5"


async def test_sets_budget_stop_returns_the_best_so_far(store):
    model = scripted({"solver": [ans(5), ans(7)], "verifier": [bad(), ok()], "corrector": [ans(7)]})
    # calls: sampler, verify 0, correct 0, then refused: solution 0's correction is unverified
    result = await run_sets(store, model, {"m": 2, "r": 2}, budget=Budget(max_calls=3))
    assert result.stop_reason == "budget"
    assert model.counters == {"solver": 2, "verifier": 1, "corrector": 1}
    assert result.answer == "7"  # none verified: both final solutions (7 after correction, and 7) count
    assert events(store, result.run_id, "budget")
    assert events(store, result.run_id, "stop")[0]["reason"] == "budget"
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match and replayed.stop_reason == "budget"


async def test_sets_budget_refusing_the_samples_gives_no_answer(store):
    model = scripted({"solver": [ans(5)]})
    result = await run_sets(store, model, {"m": 1}, budget=Budget(max_calls=0))
    assert result.stop_reason == "budget" and result.answer is None


async def test_sets_bad_params_fail_before_the_run():
    with pytest.raises(ConfigError, match="graph steps"):
        await run("sets", TASK, params={"m": 64, "r": 10}, models={"local": scripted({})})
    with pytest.raises(ConfigError, match="rounds: Extra inputs"):
        await run("sets", TASK, params={"rounds": 2}, models={"local": scripted({})})


# -- ACAR: pure routing -------------------------------------------------------------------


def test_sigma_values():
    assert sigma(["4", "4", "4"]) == 0.0
    assert sigma(["4", "4", "5"]) == 0.5
    assert sigma(["4", "5", "6"]) == 1.0
    assert sigma(["4", None, None]) == 1.0  # each unreadable answer is its own
    assert sigma(["4", "4", None]) == 0.5
    assert sigma(["4"]) == 0.0 and sigma([]) == 0.0


@pytest.mark.parametrize(("value", "mode"), [
    (0.0, "one"), (0.2999, "one"), (0.3, "two"), (0.3001, "two"), (0.5, "two"), (0.6999, "two"),
    (0.7, "three"), (0.7001, "three"), (1.0, "three")])
def test_choose_mode_at_and_around_the_cut_points(value, mode):
    assert choose_mode(value, [0.3, 0.7]) == mode


answers_st = st.lists(st.one_of(st.none(), st.sampled_from("abcde")), min_size=1, max_size=12)


@given(answers_st)
def test_sigma_is_in_unit_interval(answers):
    assert 0.0 <= sigma(answers) <= 1.0


@given(answers_st, st.sampled_from("fghij"))
def test_sigma_grows_with_distinct_answers(answers, fresh):
    # replacing a duplicate by a new answer adds one distinct answer and never lowers sigma
    seen: set = set()
    for i, a in enumerate(answers):
        if a is not None and a in seen:
            changed = [*answers[:i], fresh, *answers[i + 1:]]
            assert sigma(changed) > sigma(answers)
            return
        seen.add(a)


@given(st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_mode_boundaries(value, other):
    mode = choose_mode(value, [0.3, 0.7])
    assert mode == ("one" if value < 0.3 else "two" if value < 0.7 else "three")
    if value <= other:  # monotone: more disagreement never routes to fewer models
        assert "one two three".split().index(mode) <= "one two three".split().index(choose_mode(other, [0.3, 0.7]))


def test_uses_models_names_probe_and_mode_models():
    config = Config(models={n: ModelSpec() for n in ("small", "mid", "large")},
                    roles={"default": "mid", "probe": "small", "model1": "small", "model2": "mid",
                           "model3": "large"})
    assert uses_models({}, config) == ["large", "mid", "small"]
    assert uses_models({"models": ["mid"], "probe_model": "large"}, Config()) == ["large", "mid"]
    assert uses_models({}, Config()) == ["local"]


def test_acar_cut_points_come_in_either_order():
    """Any two cut points in [0, 1] are valid (so the OpenAPI document can state the rule):
    [0.7, 0.3] is [0.3, 0.7], and equal ones leave no middle mode."""
    from refinegraph.graphs.acar import ACARParams, choose_mode

    assert ACARParams(thresholds=[0.7, 0.3]).thresholds == [0.3, 0.7]
    assert [choose_mode(s, [0.5, 0.5]) for s in (0.0, 0.5, 1.0)] == ["one", "three", "three"]


def test_acar_default_mode_params_fit_any_mode_graph():
    """The default mode_params ({"n": 1}) are self-consistency's: with self-refine as the
    mode graph they used to make every run a 400 ("n: Extra inputs are not permitted")."""
    from refinegraph.graphs.acar import ACARParams

    assert ACARParams(mode_graph="self-refine").mode_params == {}
    assert ACARParams().mode_params == {"n": 1}


async def test_acar_bad_params_fail_before_the_run():
    with pytest.raises(ConfigError, match="thresholds"):
        await run("acar", TASK, params={"thresholds": [0.3, 1.2]}, models={"local": scripted({})})
    with pytest.raises(ConfigError, match="answers a task alone"):
        await run("acar", TASK, params={"mode_graph": "sql-greedy"}, models={"local": scripted({})})
    with pytest.raises(ConfigError):
        await run("acar", TASK, params={"mode_params": {"bogus": 1}}, models={"local": scripted({})})


# -- ACAR: runs ---------------------------------------------------------------------------

THREE = Config(models={n: ModelSpec() for n in ("small", "mid", "large")},
               roles={"default": "small", "probe": "small", "model1": "small", "model2": "mid", "model3": "large",
                      "judge": "large"})


def solver_queue(*answers: Any) -> list[str]:
    return [ans(a) for a in answers]


async def run_acar(store, models, params=None, budget=None, config=THREE):
    return await run("acar", TASK, store=store, models=models, params=params, budget=budget, config=config)


async def test_acar_one_model_mode_makes_no_calls_beyond_probes(store):
    model = scripted({"solver": solver_queue(5, 5, 5)})
    result = await run("acar", TASK, store=store, models={"local": model})
    assert result.answer == "5" and result.stop_reason == "done" and result.model_calls == 1
    assert result.state["mode"] == "one" and result.state["sigma"] == 0.0
    decided, final = events(store, result.run_id, "route")
    assert decided["phase"] == "decided" and final["phase"] == "final"
    assert decided["probe_answers"] == ["5", "5", "5"] and decided["mode"] == "one" and decided["models"] == []
    assert decided["probe_temperature"] == 0.7 and decided["probe_seed"] == 0 and decided["probes"] == 3
    assert final["winner"] == "5" and final["tokens"] == result.usage["total_tokens"] > 0
    assert final["model_answers"] == {} and final["cost_usd"] is None
    (call,) = events(store, result.run_id, "llm_call")
    assert call["role"] == "probe" and call["params"]["n"] == 3


async def test_acar_two_model_mode_votes_with_the_probes(store):
    small = scripted({"solver": solver_queue(4, 4, 5, 5)}, name="small")
    mid = scripted({"solver": solver_queue(5)}, name="mid")
    large = scripted({}, name="large")
    result = await run_acar(store, {"small": small, "mid": mid, "large": large})
    assert result.state["mode"] == "two" and result.state["sigma"] == 0.5
    assert result.answer == "5"  # 5: two models + one probe beat 4: two probes
    assert small.counters == {"solver": 4} and mid.counters == {"solver": 1} and large.counters == {}
    decided, final = events(store, result.run_id, "route")
    assert decided["models"] == ["small", "mid"] and decided["sigma"] == 0.5
    assert final["model_answers"] == {"small": "5", "mid": "5"} and final["winner"] == "5"
    calls = events(store, result.run_id, "llm_call")
    assert [(c["model"], c["role"]) for c in calls] == [("small", "probe"), ("small", "solver"), ("mid", "solver")]
    assert [c["params"]["seed"] for c in calls] == [0, 3, 4]  # seed + probes + position
    assert verify_run(store, result.run_id).ok


async def test_acar_two_model_tie_goes_to_the_stronger_model(store):
    small = scripted({"solver": solver_queue(4, 4, 5, 7)}, name="small")
    mid = scripted({"solver": solver_queue(5)}, name="mid")
    result = await run_acar(store, {"small": small, "mid": mid, "large": scripted({}, name="large")})
    # votes: 4 (two probes), 5 (mid + one probe), 7 (small): 4 and 5 tie, mid's answer wins
    assert result.answer == "5"
    vote = events(store, result.run_id, "vote")[-1]
    assert vote["tie"] and vote["winner"] == "5"


async def test_acar_three_model_majority_skips_the_judge(store):
    small = scripted({"solver": solver_queue(1, 2, 3, 7)}, name="small")
    mid = scripted({"solver": solver_queue(8)}, name="mid")
    large = scripted({"solver": solver_queue(7)}, name="large")
    result = await run_acar(store, {"small": small, "mid": mid, "large": large})
    assert result.state["mode"] == "three" and result.state["sigma"] == 1.0
    assert result.answer == "7" and "judge" not in large.counters
    assert events(store, result.run_id, "judge") == []
    final = events(store, result.run_id, "route")[-1]
    assert final["model_answers"] == {"small": "7", "mid": "8", "large": "7"} and final["models"] == [
        "small", "mid", "large"]


async def test_acar_three_model_disagreement_goes_to_the_judge(store):
    small = scripted({"solver": solver_queue(1, 2, 3, 7)}, name="small")
    mid = scripted({"solver": solver_queue(8)}, name="mid")
    large = scripted({"solver": solver_queue(9), "judge": [json.dumps({"choice": 2, "reason": "mid is right"})]},
                     name="large")
    result = await run_acar(store, {"small": small, "mid": mid, "large": large})
    (judge,) = events(store, result.run_id, "judge")
    assert judge["options"] == ["9", "8", "7"] and judge["chosen"] == "8" and judge["parsed_with"] == "json_schema"
    assert result.answer == "8" and result.fallbacks == {}
    assert events(store, result.run_id, "route")[-1]["winner"] == "8"
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match and replayed.answer == "8"


@pytest.mark.parametrize("judge_reply", ["I pick the second one", json.dumps({"choice": 5, "reason": "x"})])
async def test_acar_unreadable_judge_falls_back_to_the_vote(store, judge_reply):
    small = scripted({"solver": solver_queue(1, 2, 3, 7)}, name="small")
    mid = scripted({"solver": solver_queue(8)}, name="mid")
    large = scripted({"solver": solver_queue(9), "judge": [judge_reply]}, name="large")
    result = await run_acar(store, {"small": small, "mid": mid, "large": large})
    assert result.fallbacks == {"judge_unparseable": 1}
    assert events(store, result.run_id, "judge")[0]["chosen"] is None
    assert result.answer == "9"  # every answer has one vote: the strongest model's wins


async def test_acar_failing_judge_model_falls_back_to_the_vote(store):
    def broken() -> str:
        raise RuntimeError("judge server down")

    small = scripted({"solver": solver_queue(1, 2, 3, 7)}, name="small")
    mid = scripted({"solver": solver_queue(8)}, name="mid")
    large = scripted({"solver": solver_queue(9), "judge": broken}, name="large")
    result = await run_acar(store, {"small": small, "mid": mid, "large": large})
    assert result.fallbacks == {"judge_failed": 1} and result.answer == "9" and result.stop_reason == "done"


async def test_acar_judge_off_uses_the_vote(store):
    small = scripted({"solver": solver_queue(1, 2, 3, 7)}, name="small")
    mid = scripted({"solver": solver_queue(8)}, name="mid")
    large = scripted({"solver": solver_queue(9)}, name="large")
    result = await run_acar(store, {"small": small, "mid": mid, "large": large}, params={"judge": False})
    assert result.answer == "9" and "judge" not in large.counters and result.fallbacks == {}


async def test_acar_same_model_listed_twice_samples_independently(store):
    model = scripted({"solver": solver_queue(1, 2, 2, 2, 3)})
    result = await run("acar", TASK, store=store, models={"local": model})
    assert result.state["mode"] == "two" and result.answer == "2"
    calls = events(store, result.run_id, "llm_call")
    assert [c["params"]["seed"] for c in calls] == [0, 3, 4]
    final = events(store, result.run_id, "route")[-1]
    assert final["model_answers"] == {"local": "2", "local#2": "3"}


async def test_acar_budget_stop_returns_the_best_so_far(store):
    small = scripted({"solver": solver_queue(4, 4, 5, 5)}, name="small")
    mid = scripted({"solver": solver_queue(5)}, name="mid")
    result = await run_acar(store, {"small": small, "mid": mid, "large": scripted({}, name="large")},
                            budget=Budget(max_calls=2))
    assert result.stop_reason == "budget"
    assert mid.counters == {}
    # probes 4, 4, 5 and small's 5: a tie that the model's answer wins
    assert result.answer == "5"
    final = events(store, result.run_id, "route")[-1]
    assert final["model_answers"] == {"small": "5"} and final["winner"] == "5"
    assert events(store, result.run_id, "stop")[-1]["reason"] == "budget"
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match


async def test_acar_budget_after_probes_in_three_mode_answers_with_the_probes(store):
    small = scripted({"solver": solver_queue(4, 4, 5)}, name="small")
    result = await run_acar(store, {"small": small, "mid": scripted({}, name="mid"),
                                    "large": scripted({}, name="large")}, budget=Budget(max_calls=1))
    assert result.stop_reason == "budget" and result.answer == "4" and result.state["mode"] == "two"


async def test_acar_with_sets_as_the_mode_graph(store):
    small = scripted({"solver": solver_queue(4, 4, 5, 5), "verifier": lambda: ok()}, name="small")
    mid = scripted({"solver": solver_queue(5), "verifier": lambda: ok()}, name="mid")
    result = await run_acar(store, {"small": small, "mid": mid, "large": scripted({}, name="large")},
                            params={"mode_graph": "sets", "mode_params": {"m": 1, "r": 1}})
    assert result.answer == "5" and small.counters == {"solver": 4, "verifier": 1}
    verdicts = events(store, result.run_id, "verdict")
    assert len(verdicts) == 2
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match


async def test_acar_resume_inside_a_nested_mode_graph_repays_nothing(store, monkeypatch):
    """The nested graph inherits the run's checkpointer: a crash inside it resumes inside it."""
    from refinegraph import RunFailed, resume
    from refinegraph.graphs import consistency
    from refinegraph.runner import clear_compiled_graphs

    real = consistency.finish
    seen = {"n": 0}

    async def crash_in_second_model(state, runtime):
        seen["n"] += 1
        if seen["n"] == 2:
            raise RuntimeError("power cut inside mid's mode graph, after its call")
        return await real(state, runtime)

    monkeypatch.setattr(consistency, "finish", crash_in_second_model)
    clear_compiled_graphs()
    small = scripted({"solver": solver_queue(4, 4, 5, 5)}, name="small")
    mid = scripted({"solver": solver_queue(5)}, name="mid")
    models = {"small": small, "mid": mid, "large": scripted({}, name="large")}
    with pytest.raises(RunFailed) as failed:
        await run_acar(store, models)
    run_id = failed.value.result.run_id
    monkeypatch.setattr(consistency, "finish", real)
    clear_compiled_graphs()
    small.calls.clear()
    mid.calls.clear()
    result = await resume(run_id, store=store, models=models)
    assert small.calls == [] and mid.calls == []
    assert result.answer == "5" and result.stop_reason == "done" and result.model_calls == 3
    assert events(store, run_id, "route")[-1]["model_answers"] == {"small": "5", "mid": "5"}
    assert verify_run(store, run_id).ok


# -- the real embedded model --------------------------------------------------------------


@pytest.fixture(scope="module")
def local_model():
    from refinegraph.models import LocalModel
    return LocalModel("local")


@pytest.mark.local
async def test_sets_on_the_embedded_model(store, local_model):
    result = await run("sets", "What is 2 + 3?", store=store, models={"local": local_model},
                       params={"m": 2, "r": 1, "max_tokens": 64, "verifier_max_tokens": 64})
    assert result.stop_reason in {"done", "no_answer"}
    verdicts = events(store, result.run_id, "verdict")
    assert 2 <= len(verdicts) <= 4
    assert len(events(store, result.run_id, "refine")) <= 2
    assert len(events(store, result.run_id, "vote")) == 1
    assert verify_run(store, result.run_id).ok


@pytest.mark.local
async def test_acar_on_the_embedded_model(store, local_model):
    result = await run("acar", "What is 2 + 3?", store=store, models={"local": local_model},
                       params={"max_tokens": 64, "mode_params": {"n": 1, "max_tokens": 64}, "judge_max_tokens": 64})
    decided, final = events(store, result.run_id, "route")
    assert decided["probes"] == 3 and decided["mode"] == result.state["mode"]
    assert decided["mode"] == choose_mode(decided["sigma"], [0.3, 0.7])
    assert len(final["model_answers"]) == {"one": 0, "two": 2, "three": 3}[decided["mode"]]
    assert final["tokens"] == result.usage["total_tokens"]
    assert verify_run(store, result.run_id).ok
