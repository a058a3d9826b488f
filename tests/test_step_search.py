"""Step-level search (beam search, DVTS, particle filtering) on small cases worked out by
hand, with a scripted step writer and a scripted reward judge (test doubles).

The step writer answers from a table: the steps so far -> the next steps, in order. The
judge gives each partial solution the reward in REWARDS (its last step's score; the
judge's scores are 0..10). Step texts hold no digits except in final answers, so the
number read from an unfinished solution is None."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest

from refinegraph import Budget, replay, run
from refinegraph.config import Config, ModelSpec
from refinegraph.graphs.step_search import resample, resampling_weights
from refinegraph.models import ScriptedModel
from refinegraph.trace.verify import verify_run

TASK = "How many marbles does Ann have?"


def steps_in(prompt: str, start: str, end: str | None) -> tuple[str, ...]:
    body = prompt.split(start, 1)[1]
    body = body.split(end, 1)[0] if end else body
    if "(none yet)" in body:
        return ()
    return tuple(line.split(": ", 1)[1] for line in body.strip().splitlines() if line.startswith("Step "))


def scripted(tree: dict[tuple[str, ...], list[str]], rewards: dict[tuple[str, ...], float]) -> ScriptedModel:
    served: dict[tuple[str, ...], int] = defaultdict(int)

    def respond(messages):
        system, user = messages[0]["content"], messages[-1]["content"]
        if system.startswith("You are a strict grader"):
            steps = steps_in(user, "steps):\n", None)
            score = 10 * rewards[steps]
            return json.dumps({"steps": [5] * (len(steps) - 1) + [score], "score": score})
        steps = steps_in(user, "Steps so far:\n", "\n\nWrite the next step.")
        text = tree[steps][served[steps]]
        served[steps] += 1
        return text + "\n\nand a second paragraph the stepper must cut"
    return ScriptedModel(respond, name="local")


async def search(graph, model, store, **params):
    return await run(graph, TASK, store=store, models={"local": model}, params=params, checkpoint=False)


BEAM_TREE = {
    (): ["alpha", "beta", "gamma", "delta"],
    ("beta",): ["beta one", "The answer is 5."],
    ("gamma",): ["gamma one", "gamma two"],
    ("gamma", "gamma one"): ["The answer is 7.", "The answer is 5."],
    ("beta", "beta one"): ["The answer is 5.", "more words"],
}
BEAM_REWARDS = {
    ("alpha",): 0.5, ("beta",): 0.9, ("gamma",): 0.7, ("delta",): 0.2,
    ("beta", "beta one"): 0.6, ("beta", "The answer is 5."): 0.8, ("gamma", "gamma one"): 0.95,
    ("gamma", "gamma two"): 0.1, ("gamma", "gamma one", "The answer is 7."): 0.9,
    ("gamma", "gamma one", "The answer is 5."): 0.3, ("beta", "beta one", "The answer is 5."): 0.7,
    ("beta", "beta one", "more words"): 0.4,
}


async def test_beam_search_keeps_the_best_n_over_m_and_votes_by_reward(store):
    """n=4, M=2: four first steps (ids 1-4: 0.5, 0.9, 0.7, 0.2) -> beta (2) and gamma (3)
    survive. Their children 5, 6 (beta) and 7, 8 (gamma): 6 is complete (0.8); of the open
    ones gamma-one (7, 0.95) and beta-one (5, 0.6) survive. Step 3: 9 (7, 0.9), 10 (5, 0.3),
    11 (5, 0.7) complete, 12 open. Weighted: 5 gets 0.8 + 0.3 + 0.7 = 1.8, 7 gets 0.9."""
    result = await search("beam-search", scripted(BEAM_TREE, BEAM_REWARDS), store, n=4, beam_width=2, max_steps=3)
    prunes = store.events(result.run_id, types={"prune"})
    assert [(p["kept"], p["pruned"], p["finished"]) for p in prunes] == [
        ([2, 3], [1, 4], []), ([7, 5], [8], [6]), ([12], [], [9, 10, 11])]
    assert prunes[1]["scores"] == {"5": 0.6, "6": 0.8, "7": 0.95, "8": 0.1}
    expands = store.events(result.run_id, types={"expand"})
    assert [(e["iteration"], e["parent"], e["children"]) for e in expands] == [
        (0, 0, [1, 2, 3, 4]), (1, 2, [5, 6]), (1, 3, [7, 8]), (2, 7, [9, 10]), (2, 5, [11, 12])]
    assert expands[1]["steps"] == ["beta one", "The answer is 5."] and expands[1]["complete"] == [False, True]
    (vote,) = store.events(result.run_id, types={"vote"})
    assert {g["key"]: g["weight"] for g in vote["groups"]} == {"5": 1.8, "7": 0.9} and vote["failed"] == [4]
    assert result.answer == "5" and result.state["chosen"] == 6 and result.state["score"] == 0.8
    assert result.state["solution"] == "beta\n\nThe answer is 5."
    assert verify_run(store, result.run_id).ok
    replayed = await replay(result.run_id, store=store)
    assert replayed.decisions_match and replayed.model_calls == 0


async def test_beam_search_best_selection_takes_the_top_reward(store):
    result = await search("beam-search", scripted(BEAM_TREE, BEAM_REWARDS), store, n=4, beam_width=2, max_steps=3,
                          selection="best")
    assert result.answer == "7" and result.state["chosen"] == 9
    assert store.events(result.run_id, types={"vote"}) == []


DVTS_TREE = {
    (): ["alpha", "beta"],
    ("alpha",): ["alpha gamma", "alpha delta"],
    ("beta",): ["The answer is 3.", "beta eta"],
    ("alpha", "alpha delta"): ["The answer is 8.", "The answer is 3."],
}
DVTS_REWARDS = {
    ("alpha",): 0.5, ("beta",): 0.4, ("alpha", "alpha gamma"): 0.3, ("alpha", "alpha delta"): 0.6,
    ("beta", "The answer is 3."): 0.9, ("beta", "beta eta"): 0.2,
    ("alpha", "alpha delta", "The answer is 8."): 0.7, ("alpha", "alpha delta", "The answer is 3."): 0.8,
}


async def test_dvts_searches_each_subtree_greedily(store):
    """n=4, M=2: two subtrees (alpha: 1, beta: 2). alpha's children 3 (0.3), 4 (0.6): 4 goes
    on; beta's 5 (complete, 0.9) and 6 (0.2): 5 ends its subtree. 4's children 7 (8, 0.7)
    and 8 (3, 0.8): 8 ends alpha's. Final: 5 and 8 both say 3."""
    result = await search("dvts", scripted(DVTS_TREE, DVTS_REWARDS), store, n=4, beam_width=2, max_steps=5)
    prunes = store.events(result.run_id, types={"prune"})
    assert [(p["kept"], p["pruned"], p["finished"]) for p in prunes] == [
        ([1, 2], [], []), ([4], [3, 6], [5]), ([], [7], [8])]
    assert all(p["rule"] == "best_per_subtree" for p in prunes)
    assert result.answer == "3" and result.state["chosen"] == 5
    assert len(store.events(result.run_id, types={"expand"})) == 4  # root, alpha, beta, alpha-delta
    assert (await replay(result.run_id, store=store)).model_calls == 0


PF_TREE = {
    (): ["alpha", "beta", "gamma"],
    ("alpha",): ["The answer is 4.", "alpha eta", "The answer is 6."],
}
PF_REWARDS = {("alpha",): 0.9, ("beta",): 0.1, ("gamma",): 0.1, ("alpha", "The answer is 4."): 0.8,
              ("alpha", "alpha eta"): 0.5, ("alpha", "The answer is 6."): 0.6}


async def test_particle_filter_resamples_in_proportion_to_reward(store):
    """n=3, softmax temperature 0.05: alpha's weight is 1 / (1 + 2 e^-16), so all three
    draws are alpha (1); its three copies grow in one request into 4 (answer 4, 0.8), 5
    (open, 0.5) and 6 (answer 6, 0.6); weights softmax(16, 10, 12) put (almost) all on 4,
    every draw is 4, all particles are complete, and 4 wins with weight 3 x 0.8."""
    model = scripted(PF_TREE, PF_REWARDS)
    result = await search("particle-filter", model, store, n=3, softmax_temperature=0.05, max_steps=4)
    first, second = store.events(result.run_id, types={"prune"})
    assert first["weights"][0] == pytest.approx(1 / (1 + 2 * math.exp(-16)), rel=1e-6)
    assert first["kept"] == [1, 1, 1] and first["pruned"] == [2, 3] and first["rule"] == "resample"
    assert second["scores"] == {"4": 0.8, "5": 0.5, "6": 0.6} and second["kept"] == [4, 4, 4]
    expands = store.events(result.run_id, types={"expand"})
    assert [(e["parent"], e["children"]) for e in expands] == [(0, [1, 2, 3]), (1, [4]), (1, [5]), (1, [6])]
    calls = store.events(result.run_id, types={"llm_call"})
    assert [c["params"]["n"] for c in calls if c["role"] == "solver"] == [3, 3]  # copies share one request
    (vote,) = store.events(result.run_id, types={"vote"})
    assert vote["groups"][0]["key"] == "4" and vote["groups"][0]["weight"] == pytest.approx(2.4)
    assert result.answer == "4"
    assert (await replay(result.run_id, store=store)).decisions_match


def test_resampling_weights_by_hand():
    e9, e5 = math.exp(0.9), math.exp(0.5)
    assert resampling_weights([0.9, 0.5, None], 1.0) == pytest.approx([e9 / (e9 + e5), e5 / (e9 + e5), 0.0])
    assert resampling_weights([None, None], 1.0) == [0.5, 0.5]
    assert resample([0.0, 1.0, 0.0], seed=3, iteration=1) == [1, 1, 1]
    draws = resample([0.5, 0.5], seed=7, iteration=2)
    assert draws == resample([0.5, 0.5], seed=7, iteration=2)  # seeded: a replay draws alike


def test_weak_particles_keep_a_chance():
    """At temperature 1 a particle with reward 0.1 beside one with 0.9 is drawn about 31% of the time."""
    weights = resampling_weights([0.9, 0.1], 1.0)
    draws = [i for it in range(200) for i in resample(weights, seed=0, iteration=it)]
    assert weights[1] == pytest.approx(1 / (1 + math.exp(0.8)))
    assert 0.25 < draws.count(1) / len(draws) < 0.37


async def test_line_steps_and_the_step_cap(store):
    tree = {(): ["one line\nanother"], ("one line",): ["two lines"], ("one line", "two lines"): ["three"]}
    rewards = {("one line",): 0.5, ("one line", "two lines"): 0.5, ("one line", "two lines", "three"): 0.5}
    result = await search("beam-search", scripted(tree, rewards), store, n=1, beam_width=1, max_steps=2,
                          step_delimiter="line")
    expands = store.events(result.run_id, types={"expand"})
    assert [e["steps"] for e in expands] == [["one line"], ["two lines"]]
    assert result.stop_reason == "done" and result.state["chosen"] == 2 and result.answer == "one line\n\ntwo lines"


async def test_budget_stops_the_search_with_the_candidates_so_far(store):
    model = scripted(BEAM_TREE, BEAM_REWARDS)
    result = await run("beam-search", TASK, store=store, models={"local": model}, checkpoint=False,
                       params={"n": 4, "beam_width": 2, "max_steps": 3}, budget=Budget(max_calls=9))
    assert result.stop_reason == "budget"
    assert (await replay(result.run_id, store=store)).decisions_match


async def test_a_process_reward_model_scores_each_step(store):
    """The /pooling path: the PRM's rows are the steps' [neg, pos]; the step reward is the last P(pos)."""
    tree = {(): ["alpha", "beta"], ("alpha",): ["The answer is 2."], ("beta",): ["The answer is 9."]}
    pos = {"alpha": 0.7, "beta": 0.6, "The answer is 2.": 0.2, "The answer is 9.": 0.9}
    steps_model = scripted(tree, {})

    def pooling(messages):
        steps = [s for s in messages[0]["content"].split("\n\n", 1)[1].split("<sep>") if s]
        return json.dumps({"data": [[1 - pos[s], pos[s]] for s in steps]}["data"])
    config = Config(models={"local": ModelSpec(), "prm": ModelSpec(backend="reward", base_url="http://127.0.0.1:9/v1",
                                                                   model="prm")}, roles={"default": "local"})
    result = await run("beam-search", TASK, store=store, config=config, checkpoint=False,
                       models={"local": steps_model, "prm": ScriptedModel(pooling, name="prm")},
                       params={"n": 2, "beam_width": 1, "max_steps": 2, "reward_model": "prm",
                               "reward_step_separator": "<sep>"})
    scores = store.events(result.run_id, types={"score"})
    assert [s["steps"] for s in scores] == [[0.7], [0.6], [0.7, 0.2], [0.6, 0.9]]
    assert result.answer == "9"


def test_bench_gsm8k_runs_the_three_searches(tmp_path, monkeypatch):
    """The command that shows their worth on a real model, here on a scripted one."""
    from typer.testing import CliRunner

    from refinegraph.cli.app import app

    def respond(messages):
        if messages[0]["content"].startswith("You are a strict grader"):
            return json.dumps({"steps": [9], "score": 9})
        return "Nine eggs are sold at two dollars each. The answer is 18.\n\nA second paragraph."

    monkeypatch.setattr("refinegraph.runs.execute.build_model", lambda name, spec: ScriptedModel(respond, name=name))
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "Janet sells 9 eggs at $2. Dollars?", "answer": "9*2=18\n#### 18"}) + "\n")
    out_dir = tmp_path / "report"
    result = CliRunner().invoke(app, ["bench", "gsm8k", "--data", str(data), "--graphs",
                                      "beam-search,dvts,particle-filter", "-p", "n=2", "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out_dir / "questions.jsonl").open()]
    assert {r["method"]: (r["correct"], r["answer"]) for r in rows} == {
        "beam-search": (True, "18"), "dvts": (True, "18"), "particle-filter": (True, "18")}
