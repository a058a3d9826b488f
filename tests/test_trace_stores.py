"""The same trace commands on both stores: runs recorded, listed, shown, verified, exported,
replayed and rendered through the CLI (REFINEGRAPH_TRACE_STORE names the PostgreSQL store),
and `trace copy` between any two stores."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from refinegraph import replay, resume, run
from refinegraph.cli.app import app
from refinegraph.graphs import self_refine
from refinegraph.runner import clear_compiled_graphs
from refinegraph.trace.merge import MergeConflict, copy_store
from refinegraph.trace.verify import verify_run

from conftest import scripted_by_role, verdict

pytestmark = pytest.mark.both_stores
cli = CliRunner()


def record(store, task: str = "task", run_id: str | None = None) -> str:
    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    return asyncio.run(run("self-refine", task, store=store, models={"local": model}, run_id=run_id)).run_id


def test_every_trace_command_reads_the_configured_store(store, tmp_path):
    run_id = record(store)
    listed = cli.invoke(app, ["trace", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["run_id"] for r in json.loads(listed.output)] == [run_id]
    shown = cli.invoke(app, ["trace", "show", run_id[:8]])
    assert shown.exit_code == 0 and "run_finished" in shown.output
    checked = cli.invoke(app, ["trace", "verify"])
    assert checked.exit_code == 0 and "1 runs: 1 hold (1 sealed)" in checked.output
    exported = cli.invoke(app, ["trace", "export", run_id])
    lines = [json.loads(line) for line in exported.output.splitlines()]
    assert exported.exit_code == 0 and [e["hash"] for e in lines] == [r["hash"] for r in store.raw_events(run_id)]
    replayed = cli.invoke(app, ["trace", "replay", run_id, "--json"])
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.output)["decisions_match"] and json.loads(replayed.output)["model_calls"] == 0
    page = tmp_path / "run.html"
    rendered = cli.invoke(app, ["trace", "html", run_id, "-o", str(page)])
    assert rendered.exit_code == 0 and run_id in page.read_text()
    assert cli.invoke(app, ["trace", "html", "nosuchrun", "-o", "-"]).exit_code == 2


def test_replay_makes_no_call_and_reaches_the_same_decisions(store):
    run_id = record(store)
    result = asyncio.run(replay(run_id, store=store))
    assert result.model_calls == 0 and result.decisions_match and result.answer_matches
    assert verify_run(store, result.run_id).ok and store.run(result.run_id)["replay_of"] == run_id


def test_an_edit_around_the_triggers_is_named_by_trace_verify(store, tamper):
    """The append-only triggers stop the store's own connection; a superuser who goes
    around them (SQLite: drops them; PostgreSQL: replica mode) is caught by the chain."""
    run_id = record(store)
    [(body,)] = tamper("SELECT body FROM events WHERE run_id=? AND seq=2", (run_id,))
    tamper("UPDATE events SET body=? WHERE run_id=? AND seq=2", (body.replace('"', "'", 1), run_id))
    checked = cli.invoke(app, ["trace", "verify"])
    assert checked.exit_code == 1 and f"FAILED run {run_id} at event 2" in checked.output


@pytest.mark.parametrize("target_kind", ["sqlite", "postgres"])
def test_trace_copy_moves_runs_between_stores_and_verifies_them(make_store, store, target_kind, tmp_path):
    if target_kind == "postgres" and make_store.kind == "sqlite":
        from conftest import Stores, require_pg

        require_pg()
        other = Stores("postgres", tmp_path)
    elif target_kind == "sqlite" and make_store.kind == "postgres":
        from conftest import Stores

        other = Stores("sqlite", tmp_path)
    else:
        other = make_store
    first, second = record(store, "one"), record(store, "two")
    target = other.location(len(other.opened))
    try:
        done = cli.invoke(app, ["trace", "copy", "--from", make_store.location(0), "--to", target, "--json"])
        assert done.exit_code == 0, done.output
        report = json.loads(done.output)
        assert sorted(report["copied"]) == sorted([first, second]) and report["ok"] and report["blobs"] > 0
        again = cli.invoke(app, ["trace", "copy", "--from", make_store.location(0), "--to", target, "--json"])
        assert json.loads(again.output)["already"] and json.loads(again.output)["events"] == 0
        copied = other.new()
        for run_id in (first, second):
            assert verify_run(copied, run_id).sealed
            assert copied.raw_events(run_id) == store.raw_events(run_id)
        # and back: nothing new, nothing conflicting
        back = copy_store(copied, store)
        assert sorted(back.already) == sorted([first, second]) and back.ok
    finally:
        if other is not make_store:
            other.close()


def test_a_copy_refuses_another_history_and_extends_a_resumed_run(make_store, store, monkeypatch):
    target = make_store.new()
    record(store, "original", run_id="same-id")
    other = make_store.new()
    record(other, "another", run_id="same-id")
    copy_store(store, target)
    with pytest.raises(MergeConflict, match="different history"):
        copy_store(other, target)
    assert target.events("same-id", types={"run_started"})[0]["input"]["task"] == "original"
    refused = cli.invoke(app, ["trace", "copy", "--from", make_store.location(2), "--to", make_store.location(1)])
    assert refused.exit_code == 1 and "different history" in refused.output

    class Stop(BaseException):
        pass

    async def cut(state, runtime):
        raise Stop

    monkeypatch.setattr(self_refine, "refine", cut)
    clear_compiled_graphs()
    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    with pytest.raises(Stop):
        asyncio.run(run("self-refine", "cut", store=store, models={"local": model}, run_id="cut-run"))
    assert copy_store(store, target).copied == ["cut-run"]
    assert not verify_run(target, "cut-run").sealed
    monkeypatch.undo()
    clear_compiled_graphs()
    asyncio.run(resume("cut-run", store=store, models={"local": model}, force=True))
    report = copy_store(store, target)
    assert report.extended == ["cut-run"] and report.ok
    assert verify_run(target, "cut-run").sealed and target.run("cut-run")["status"] == "finished"


def test_copy_from_a_missing_store_is_a_clear_error(store, tmp_path):
    missing = tmp_path / "nowhere.sqlite"
    done = cli.invoke(app, ["trace", "copy", "--from", str(missing), "--to", str(tmp_path / "t.sqlite")])
    assert done.exit_code == 2 and "no trace store" in done.output and not missing.exists()


def test_render_of_a_missing_run_names_the_store(store):
    from refinegraph.trace.html import render_run

    with pytest.raises(KeyError, match="no run 'nosuchrun' in"):
        render_run(store, "nosuchrun")


WRITER = """
import asyncio, sys
import refinegraph
from refinegraph.models import ScriptedModel

for i in range(int(sys.argv[1])):
    model = ScriptedModel(lambda messages: "The answer is 42.", name="local")
    asyncio.run(refinegraph.run("greedy", f"task {i}", models={"local": model}))
"""


def test_copying_a_store_while_runs_are_written_to_it(make_store, store):
    """What `trace copy` promises for a live store: each copy made while another process
    writes runs verifies in the target, and the copy after the writer ends holds every run."""
    import os
    import subprocess
    import sys

    target = make_store.new()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, "40"], env=dict(os.environ), stderr=subprocess.PIPE,
                              text=True)
    copies = 0
    while writer.poll() is None:
        report = copy_store(store, target)
        assert report.ok, report.unverified
        copies += 1
    assert writer.returncode == 0, writer.stderr.read()[-2000:]
    final = copy_store(store, target)
    assert final.ok and copies > 1
    assert len(target.all_runs()) == 40 == target.count_runs() and store.count_runs() == 40
    assert all(verify_run(target, row["run_id"]).sealed for row in target.all_runs())
