"""Resume: an interrupted run runs again from its input, every finished call served from its
trace (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import pytest

from refinegraph import RunFailed, resume, run
from refinegraph.graphs import self_refine
from refinegraph.runner import clear_compiled_graphs
from refinegraph.trace.verify import verify_run

from conftest import scripted_by_role, verdict

pytestmark = pytest.mark.both_stores


class Injected(RuntimeError):
    pass


async def test_crash_in_a_later_node_resumes_without_repeating_calls(store, monkeypatch, rg_home):
    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    real_decide = self_refine.decide

    async def crashing_decide(state, runtime):
        raise Injected("power cut after the critic's call")

    monkeypatch.setattr(self_refine, "decide", crashing_decide)
    with pytest.raises(RunFailed) as failed:
        await run("self-refine", "task", store=store, models={"local": model})
    run_id = failed.value.result.run_id
    assert isinstance(failed.value.cause, Injected)
    assert model.counters == {"solver": 1, "critic": 1, "refiner": 0}
    assert store.run(run_id)["status"] == "error"
    assert verify_run(store, run_id).ok

    monkeypatch.setattr(self_refine, "decide", real_decide)
    clear_compiled_graphs()  # the fixed program, as a new process would compile it
    result = await resume(run_id, store=store, models={"local": model})
    # The solver and the first critique were not paid again.
    assert model.counters == {"solver": 1, "critic": 2, "refiner": 1}
    assert result.stop_reason == "done" and result.answer == "refiner answer 1"
    assert result.model_calls == 4
    report = verify_run(store, run_id)
    assert report.ok and report.sealed
    types = [e["type"] for e in store.events(run_id)]
    assert types.count("run_resumed") == 1 and types[-1] == "run_finished"


async def test_crash_inside_a_node_after_its_call_is_served_from_the_trace(store, monkeypatch):
    from refinegraph.tools import structured

    model = scripted_by_role([verdict(9, done=True)])
    real_parse = structured.parse_structured
    calls = {"n": 0}

    def parse_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Injected("crash after the model answered, before the verdict was recorded")
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(structured, "parse_structured", parse_then_crash)
    with pytest.raises(RunFailed) as failed:
        await run("self-refine", "task", store=store, models={"local": model})
    run_id = failed.value.result.run_id
    assert model.counters["critic"] == 1

    result = await resume(run_id, store=store, models={"local": model})
    assert model.counters == {"solver": 1, "critic": 1, "refiner": 0}
    # The resume runs the graph again from its input: the solver's and the critic's calls
    # both come from the trace, and nothing is paid twice.
    assert result.cache_hits == 2 and result.stop_reason == "done"
    cached = [e for e in store.events(run_id, types={"llm_call"}) if e["source"] == "cache"]
    assert [e["role"] for e in cached] == ["solver", "critic"]
    assert verify_run(store, run_id).ok


async def test_replay_of_a_changed_program_is_a_clear_miss(store, monkeypatch):
    from refinegraph import replay
    from refinegraph.agents import solver
    from refinegraph.context import ReplayMiss
    from refinegraph.prompts import Prompt

    model = scripted_by_role([verdict(9, done=True)])
    result = await run("self-refine", "task", store=store, models={"local": model}, checkpoint=False)
    monkeypatch.setattr(solver, "load_prompt", lambda name: Prompt(name, "A different system prompt.", "$task"))
    with pytest.raises(RunFailed) as failed:
        await replay(result.run_id, store=store)
    assert isinstance(failed.value.cause, ReplayMiss)
    assert failed.value.result.model_calls == 0
    assert store.events(failed.value.result.run_id, types={"error"})[0]["error_class"] == "ReplayMiss"
    assert verify_run(store, failed.value.result.run_id).ok


def test_resume_of_a_finished_run_is_refused(store):
    import asyncio

    from typer.testing import CliRunner

    from refinegraph.cli.app import app

    model = scripted_by_role([verdict(9, done=True)])
    result = asyncio.run(run("self-refine", "task", store=store, models={"local": model}, checkpoint=False))
    out = CliRunner().invoke(app, ["resume", result.run_id])
    assert out.exit_code == 2 and "nothing to resume" in out.output


CRASHING_RUN = """
import asyncio, json, os
from refinegraph import run
from refinegraph.graphs import self_refine
from refinegraph.models import ScriptedModel

def verdict(score, done):
    return json.dumps({"correctness": score, "completeness": score, "clarity": score, "score": score,
                       "verdict": "done" if done else "revise", "edits": ["more detail"]})

replies = iter(["first answer", verdict(4, False)])
model = ScriptedModel(lambda messages: next(replies), name="local")

async def power_cut(state, runtime):
    os._exit(137)  # no finally, no flush: as kill -9 would

self_refine.refine = power_cut
asyncio.run(run("self-refine", "task", models={"local": model}, run_id="c" * 32))
"""


def test_hard_crash_leaves_a_trace_that_resumes(store, rg_home):
    """The process dies without cleanup mid-run: the trace holds every finished model call,
    verifies, and resumes without re-paying any of them."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CRASHING_RUN], env={**os.environ, "REFINEGRAPH_HOME": str(rg_home)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr
    run_id = "c" * 32
    report = verify_run(store, run_id)
    assert report.ok and not report.sealed
    before = store.events(run_id)
    # Both finished calls were committed before their nodes went on (the critic's decision,
    # made after its call, had not been: the resume makes it again from the recorded reply).
    assert [(e["role"], e["source"]) for e in before if e["type"] == "llm_call"] == [("solver", "backend"),
                                                                                     ("critic", "backend")]

    model = scripted_by_role([verdict(9, done=True)])
    result = await_resume(run_id, store, model)
    assert model.counters == {"solver": 0, "critic": 1, "refiner": 1}
    assert result.stop_reason == "done" and result.answer == "refiner answer 1"
    assert verify_run(store, run_id).sealed
    assert len(store.events(run_id, types={"critique"})) == 2


def await_resume(run_id, store, model):
    import asyncio
    return asyncio.run(resume(run_id, store=store, models={"local": model}))


class PowerCut(BaseException):
    """A hard stop (as kill -9 would be): nothing below it handles or records it."""


async def test_a_run_stopped_before_its_first_node_resumes_under_the_same_id(store, monkeypatch):
    import contextlib

    from refinegraph.runs import execute

    model = scripted_by_role([verdict(9, done=True)])
    real = execute._checkpointer

    @contextlib.asynccontextmanager
    async def dies_on_open(*args, **kwargs):
        raise PowerCut("killed between run_started and the first node")
        yield  # pragma: no cover

    monkeypatch.setattr(execute, "_checkpointer", dies_on_open)
    with pytest.raises(PowerCut):
        await run("self-refine", "task", store=store, models={"local": model}, run_id="early-crash")
    assert store.run("early-crash")["status"] == "running" and model.counters["solver"] == 0

    monkeypatch.setattr(execute, "_checkpointer", real)
    result = await resume("early-crash", store=store, models={"local": model}, force=True)
    assert (result.run_id, result.stop_reason, result.answer) == ("early-crash", "done", "solver answer 1")
    resumed = store.events("early-crash", types={"run_resumed"})
    assert [(e["recorded_calls"], e["superseded"]) for e in resumed] == [(0, [])]
    report = verify_run(store, "early-crash")
    assert report.ok and report.sealed


async def test_a_run_resumes_from_its_trace_alone(store, monkeypatch, rg_home):
    """No checkpoint file is written or needed: the trace is what a resume runs from."""
    from refinegraph.runner import decisions

    async def crashing_decide(state, runtime):
        raise Injected("crash after the critic's call")

    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    real_decide = self_refine.decide
    monkeypatch.setattr(self_refine, "decide", crashing_decide)
    clear_compiled_graphs()
    with pytest.raises(RunFailed):
        await run("self-refine", "task", store=store, models={"local": model}, run_id="no-ckpt")
    monkeypatch.setattr(self_refine, "decide", real_decide)
    clear_compiled_graphs()
    result = await resume("no-ckpt", store=store, models={"local": model})
    assert not (rg_home / "checkpoints.sqlite").exists()
    assert model.counters == {"solver": 1, "critic": 2, "refiner": 1}
    assert (result.cache_hits, result.model_calls, result.answer) == (2, 4, "refiner answer 1")
    [resumed] = store.events("no-ckpt", types={"run_resumed"})
    started = [e["seq"] for e in store.events("no-ckpt", types={"node_started"}) if e["seq"] < resumed["seq"]]
    assert resumed["superseded"] == started and resumed["recorded_calls"] == 2
    # The superseded attempt's decisions are not the run's: one critique each of 4 and 9.
    assert [d["score"] for d in decisions(store, "no-ckpt") if d["type"] == "critique"] == [4, 9]
