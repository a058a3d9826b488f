"""Edge cases of replay, resume, verify and bad input, each once a real bug."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from refinegraph import Budget, RunFailed, replay, resume, run
from refinegraph.cli.app import app
from refinegraph.config import Config, ConfigError, ModelSpec, load_config
from refinegraph.context import RunContext
from refinegraph.graphs import self_refine
from refinegraph.models import ScriptedModel
from refinegraph.runner import RunNotResumable, TraceUnusable, clear_compiled_graphs
from refinegraph.trace.store import TraceStore, TraceWriter
from refinegraph.trace.verify import verify_run

from conftest import scripted_by_role, verdict

runner = CliRunner()


class Crash(RuntimeError):
    pass


async def test_replay_of_a_call_budget_stop_matches(store):
    model = scripted_by_role([verdict(4), verdict(6)])
    result = await run("self-refine", "t", store=store, models={"local": model}, budget=Budget(max_calls=3),
                       checkpoint=False)
    assert result.stop_reason == "budget"
    replayed = await replay(result.run_id, store=store)
    assert replayed.decisions_match and replayed.answer_matches and replayed.model_calls == 0


async def test_replay_of_a_wall_time_stop_is_refused_where_the_original_was(store):
    def slow(messages):
        time.sleep(0.15)
        return verdict(4) if "strict reviewer" in messages[0]["content"] else "an answer"

    result = await run("self-refine", "t", store=store, models={"local": ScriptedModel(slow, name="local")},
                       budget=Budget(max_seconds=0.4), checkpoint=False)
    assert result.stop_reason == "budget"
    assert store.events(result.run_id, types={"budget"})[0]["reason"] == "seconds"
    replayed = await replay(result.run_id, store=store)
    assert replayed.decisions_match and replayed.answer == result.answer and replayed.model_calls == 0


async def test_identical_sampling_calls_are_independent_draws(store):
    store.create_run("r", "t", "t")
    model = ScriptedModel(["first draw", "second draw"], name="local")
    ctx = RunContext(run_id="r", models={"local": model}, roles={"default": "local"},
                     writer=TraceWriter(store, "r", new=True))
    messages = [{"role": "user", "content": "pick a number"}]
    a = await ctx.sample("solver", messages, temperature=1.0)
    b = await ctx.sample("solver", messages, temperature=1.0)
    assert (a.texts, b.texts) == (["first draw"], ["second draw"]) and ctx.model_calls == 2


async def test_resume_under_a_binding_token_budget_does_not_repay(store, monkeypatch):
    from refinegraph.tools import structured

    model = scripted_by_role([verdict(9, done=True)])
    real_parse, calls = structured.parse_structured, {"n": 0}

    def parse_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Crash("after the critic's call")
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(structured, "parse_structured", parse_then_crash)
    budget = Budget(max_tokens=600)  # the critic's 256 requested tokens are capped
    with pytest.raises(RunFailed) as failed:
        await run("self-refine", "t " * 150, store=store, models={"local": model}, budget=budget)
    run_id = failed.value.result.run_id
    capped = store.events(run_id, types={"llm_call"})[-1]
    assert capped["max_tokens_capped"]
    result = await resume(run_id, store=store, models={"local": model})
    # Both recorded calls (the solver's, and the critic's capped one) are served from the trace.
    assert model.counters["critic"] == model.counters["solver"] == 1
    assert result.cache_hits == 2 and result.stop_reason == "done"


async def run_crashing_in_decide(store, model, monkeypatch):
    """Run Self-Refine with a `decide` node that raises; then put the real one back."""
    async def crash(state, runtime):
        raise Crash("in decide")

    real = self_refine.decide
    monkeypatch.setattr(self_refine, "decide", crash)
    with pytest.raises(RunFailed) as failed:
        await run("self-refine", "t", store=store, models={"local": model})
    monkeypatch.setattr(self_refine, "decide", real)
    clear_compiled_graphs()
    return failed


async def test_resume_restores_counts_of_the_first_attempt(store, monkeypatch):
    model = scripted_by_role(["not a verdict", verdict(9, done=True)])

    failed = await run_crashing_in_decide(store, model, monkeypatch)
    result = await resume(failed.value.result.run_id, store=store, models={"local": model})
    assert result.fallbacks == {"critic_unparseable": 1}
    assert result.model_calls == 4 and result.usage["total_tokens"] > 0


async def test_resume_without_a_checkpoint_is_refused(store):
    model = scripted_by_role([verdict(9, done=True)])
    result = await run("self-refine", "t", store=store, models={"local": model}, checkpoint=False)
    db = sqlite3.connect(store.path, isolation_level=None)
    db.execute("UPDATE runs SET status='error' WHERE run_id=?", (result.run_id,))
    with pytest.raises((RunNotResumable, TraceUnusable)):
        await resume(result.run_id, store=store, models={"local": model})


async def test_resume_of_a_run_owned_by_a_live_process_is_refused(store, monkeypatch):
    import socket
    model = scripted_by_role([verdict(4), verdict(9, done=True)])

    failed = await run_crashing_in_decide(store, model, monkeypatch)
    run_id = failed.value.result.run_id
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        db = sqlite3.connect(store.path, isolation_level=None)
        db.execute("UPDATE runs SET owner=? WHERE run_id=?", (f"{socket.gethostname()}:{other.pid}", run_id))
        with pytest.raises(RunNotResumable, match="still running"):
            await resume(run_id, store=store, models={"local": model})
        result = await resume(run_id, store=store, models={"local": model}, force=True)
        assert result.stop_reason == "done"
    finally:
        other.kill()
        other.wait()


def finished_run(store) -> str:
    model = scripted_by_role([verdict(9, done=True)])
    return asyncio.run(run("self-refine", "t", store=store, models={"local": model}, checkpoint=False)).run_id


def test_verify_catches_a_cut_tail_with_the_seal_removed(store):
    run_id = finished_run(store)
    db = sqlite3.connect(store.path, isolation_level=None)
    db.execute("DROP TRIGGER events_no_delete")
    last = db.execute("SELECT MAX(seq) FROM events WHERE run_id=?", (run_id,)).fetchone()[0]
    db.execute("DELETE FROM events WHERE run_id=? AND seq>?", (run_id, last - 3))
    db.execute("UPDATE runs SET sealed_hash=NULL WHERE run_id=?", (run_id,))
    report = verify_run(store, run_id)
    assert not report.ok
    db.execute("UPDATE runs SET status='running' WHERE run_id=?", (run_id,))
    report = verify_run(store, run_id)
    assert not report.ok and "sealed" in report.problem


def test_verify_catches_an_edited_listing(store):
    run_id = finished_run(store)
    sqlite3.connect(store.path, isolation_level=None).execute(
        "UPDATE runs SET answer_preview='something else' WHERE run_id=?", (run_id,))
    report = verify_run(store, run_id)
    assert not report.ok and "listing" in report.problem


def test_replay_refuses_a_trace_with_a_forged_blob(store):
    run_id = finished_run(store)
    call = store.events(run_id, types={"llm_call"})[0]
    sqlite3.connect(store.path, isolation_level=None).execute(
        "UPDATE blobs SET data=? WHERE digest=?", (b'{"texts":["forged"],"finish_reasons":["stop"]}',
                                                    call["response_blob"]))
    with pytest.raises(TraceUnusable, match="does not verify"):
        asyncio.run(replay(run_id, store=store))
    result = runner.invoke(app, ["trace", "replay", run_id])
    assert result.exit_code == 1 and "altered" in result.output


async def test_bad_params_are_refused_before_anything_is_recorded(store):
    with pytest.raises(ConfigError, match="max_iterations"):
        await run("self-refine", "t", store=store, params={"max_iterations": "many"},
                  models={"local": scripted_by_role([])})
    with pytest.raises(ConfigError, match="colour"):
        await run("self-refine", "t", store=store, params={"colour": 1}, models={"local": scripted_by_role([])})
    assert store.runs() == []


def test_cli_bad_input_is_exit_2_with_a_clear_message(rg_home):
    cases = [
        (["run", "self-refine", "x", "--param", "max_iterations=-1"], "max_iterations"),
        (["run", "self-refine", "x", "--budget-tokens", "-5"], "-5"),
        (["run", "self-refine", "   "], "empty"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
    assert not (rg_home / "traces.sqlite").exists() or TraceStore(rg_home / "traces.sqlite").runs() == []


def test_a_corrupt_store_is_a_clear_error(rg_home):
    rg_home.mkdir(parents=True)
    (rg_home / "traces.sqlite").write_bytes(b"this is not a database" * 100)
    for args in (["trace", "list"], ["run", "self-refine", "x"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "not a usable trace store" in result.output


def test_a_foreign_sqlite_file_is_a_clear_error(rg_home):
    rg_home.mkdir(parents=True)
    sqlite3.connect(rg_home / "traces.sqlite").execute("CREATE TABLE runs (x)")
    result = runner.invoke(app, ["trace", "list"])
    assert result.exit_code == 1 and "schema" in result.output


def test_roles_without_default_fall_back_to_the_first_model(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[models.a]\nbackend = "local"\n[models.b]\nbackend = "local"\n[roles]\ncritic = "b"\n')
    config = load_config(path)
    assert config.model_for_role("solver") == "a" and config.model_for_role("critic") == "b"
    assert Config(models={"x": ModelSpec()}, roles={}).roles["default"] == "x"


def test_run_ids_are_matched_by_prefix_only(store):
    run_id = finished_run(store)
    assert store.find_run(run_id[:6]) == run_id
    for pattern in ("%", "_", ""):
        with pytest.raises(KeyError):
            store.find_run(pattern)


def test_env_is_not_leaked_between_tests(rg_home):
    assert os.environ["REFINEGRAPH_HOME"] == str(rg_home)
