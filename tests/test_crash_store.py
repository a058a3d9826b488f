"""Crashes and trace-store damage: kill -9 of a batch, crashes between trace and checkpoint,
processes writing one store at once, files cut short, tampering. The embedded-model
version of the crash is `refinegraph.bench.reliability_crash.crash_section` (a bench).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sqlite3

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from test_batch import CALLS_PER_RUN, CountingModel, PowerCut
from typer.testing import CliRunner

from refinegraph import resume, run
from refinegraph.batch import run_batch
from refinegraph.bench.reliability_common import Section
from refinegraph.bench.reliability_crash import concurrent_writers_section, crash_batch
from refinegraph.bench.reliability_damage import _cut_live, _present, tamper_section
from refinegraph.bench.stub_server import CountingServer, stub_config, stub_reply
from refinegraph.cli.app import app
from refinegraph.events import Fallback, NodeFinished, NodeStarted, RunFinished, RunStarted
from refinegraph.runner import TraceUnusable, replay, trace_marks
from refinegraph.trace import salvage
from refinegraph.trace.store import TraceStore, TraceWriter
from refinegraph.trace.verify import TraceMark, verify_run, verify_store

# -- kill -9 of a real `refinegraph batch` -------------------------------------------------------------


async def test_a_killed_batch_resumes_paying_only_the_calls_its_traces_lack(tmp_path):
    """SIGKILL while 4 calls are in flight (held unanswered by the stub), then the same command
    again: the server sees exactly the calls the traces lacked, the 4 cut calls re-paid."""
    runs = 12
    with CountingServer(stub_reply) as server:
        reference = await run_batch([{"id": f"q{i}", "task": f"Task {i}: what is {i} + {2 * i + 3}? Answer with the "
                                      "number."} for i in range(runs)], graph="self-refine", config=stub_config(server),
                                    params={"max_iterations": 1, "solver_max_tokens": 48, "critic_max_tokens": 160,
                                            "refiner_max_tokens": 48}, out=tmp_path / "reference",
                                    store=TraceStore(tmp_path / "reference.sqlite"),
                                    checkpoint_path=tmp_path / "reference.ckpt.sqlite")
        answers = {row["id"]: row["answer"]
                   for row in map(json.loads, (tmp_path / "reference" / "results.jsonl").read_text().splitlines())}
        assert reference.finished == runs and len(server.received) == runs * CALLS_PER_RUN
        outcome = await crash_batch(tmp_path / "crash", server, runs=runs, kill_after=21, hold=True,
                                    reference=answers, timeout_s=300)
    figures = outcome["figures"]
    assert outcome["problems"] == [], outcome["problems"]
    assert figures["killed_after_requests"] == 21 + figures["held_at_kill"] and figures["held_at_kill"] >= 1
    assert figures["re_paid"] == figures["held_at_kill"] == figures["calls_in_flight_at_kill"]
    assert figures["requests_after_resume"] == runs * CALLS_PER_RUN - figures["calls_finished_before_kill"]
    assert 0 < figures["runs_finished_before_kill"] < runs and figures["runs_resumed"] >= 1
    assert figures["traces_verified"] >= runs and figures["traces_failed"] == 0
    assert figures["replay_matched"] == figures["replay_replayed"] == figures["runs_resumed"]
    assert figures["answers_equal_uninterrupted"] == runs


# -- a crash between a node's trace commit and its checkpoint -----------------------------------------


def _cut_checkpoint_at(monkeypatch, cut_at: int) -> None:
    """The `cut_at`-th checkpoint write dies (as kill -9 would) after the trace committed the
    step, and the step's pending writes never reach the file either."""
    real_put, real_writes = AsyncSqliteSaver.aput, AsyncSqliteSaver.aput_writes
    count = {"puts": 0}

    async def put(self, *args, **kwargs):
        count["puts"] += 1
        if count["puts"] == cut_at:
            raise PowerCut("killed after the trace commit, before the checkpoint")
        return await real_put(self, *args, **kwargs)

    async def writes(self, *args, **kwargs):
        if count["puts"] == cut_at - 1:
            return None
        return await real_writes(self, *args, **kwargs)

    monkeypatch.setattr(AsyncSqliteSaver, "aput", put)
    monkeypatch.setattr(AsyncSqliteSaver, "aput_writes", writes)


@pytest.mark.parametrize("cut_at", range(2, 10))
async def test_a_crash_between_trace_and_checkpoint_repays_no_call(store, monkeypatch, tmp_path, cut_at):
    """The trace can hold a finished step its checkpoint lacks; the resumed run runs that
    step again and must find its call in the trace, not pay it again."""
    checkpoints = tmp_path / "checkpoints.sqlite"
    _cut_checkpoint_at(monkeypatch, cut_at)
    first = CountingModel()
    with pytest.raises(PowerCut):
        await run("self-refine", "t", store=store, models={"local": first}, run_id="r", checkpoint_path=checkpoints)
    monkeypatch.undo()
    second = CountingModel()
    result = await resume("r", store=store, models={"local": second}, checkpoint_path=checkpoints, force=True)
    assert first.answered + second.answered == CALLS_PER_RUN, (first.answered, second.answered)
    assert (result.model_calls, result.answer) == (CALLS_PER_RUN, "refined answer")
    assert verify_run(store, "r").ok
    again = await replay("r", store=store)
    assert (again.model_calls, again.decisions_match, again.answer_matches) == (0, True, True)


async def test_a_checkpoint_ahead_of_its_trace_is_named_and_not_resumed_from(store, tmp_path):
    """Events cut from a trace (a cut -wal drops whole commits) leave its checkpoint ahead
    of it: verify names the missing events and resume refuses to skip them."""
    checkpoints = tmp_path / "checkpoints.sqlite"
    with pytest.raises(PowerCut):
        await run("self-refine", "t", store=store, models={"local": CountingModel(fail_on=3)}, run_id="r",
                  checkpoint_path=checkpoints)
    events = len(store.raw_events("r"))
    assert verify_run(store, "r", trace_marks(checkpoints)["r"].events).ok
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE run_id='r' AND seq >= ?", (events - 3,))
    conn.close()
    marks = trace_marks(checkpoints)
    report = verify_run(store, "r", marks["r"].events)
    assert not report.ok and report.bad_seq == events - 3 and "checkpoint" in report.problem, report.problem
    with pytest.raises(TraceUnusable, match="checkpoint was written when its trace reached"):
        await resume("r", store=store, models={"local": CountingModel()}, checkpoint_path=checkpoints, force=True)
    assert marks["r"].store == str(store.path.resolve())
    elsewhere = {"gone": TraceMark(5, str(store.path.resolve())), "other": TraceMark(5, "/elsewhere/traces.sqlite")}
    assert verify_store(store, {**marks, **elsewhere}).runs_lost == ["gone"]  # not a run of another store


# -- processes writing one store at once ---------------------------------------------------------------


def test_four_processes_writing_one_store_lose_no_event():
    section = concurrent_writers_section(processes=4, graph_runs=1, raw_runs=2, events_per_run=40)
    assert section.ok, section.problems
    assert section.runs == 4 * 3 and section.traces_verified == 12 and section.events_lost == 0
    assert section.figures["events_written"] == section.figures["events_found"] > 4 * 2 * 40


# -- files cut short ------------------------------------------------------------------------------------


def write_runs(store: TraceStore, runs: int, middle: int = 6, prefix: str = "r") -> None:
    for r in range(runs):
        writer = TraceWriter(store, f"{prefix}{r}", new=True)
        writer.create_run("self-refine", "task")
        writer.append(RunStarted(graph="self-refine", input={"task": f"t{r}"}))
        for i in range(middle):
            writer.append(NodeStarted(node=f"n{i}"))
            writer.append(Fallback(kind="k", reason=f"run {r} reason {i}", detail="x" * (40 * i)))
            writer.append(NodeFinished(node=f"n{i}", duration_ms=float(i)))
        writer.append(RunFinished(answer=str(r), stop_reason="done", usage={}, model_calls=0, cache_hits=0))
        writer.seal("finished", "done", str(r))


def rows_of(path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return {(r[0], r[1]): tuple(r) for r in conn.execute("SELECT * FROM events")}
    finally:
        conn.close()


def test_the_page_reader_finds_every_row_sqlite_reads(tmp_path):
    """The salvage parser against SQLite itself, on a whole store with a -wal and overflow pages."""
    store = TraceStore(tmp_path / "t.sqlite")
    write_runs(store, 6)
    writer = TraceWriter(store, "big", new=True)
    writer.create_run("g", "t")
    ref = writer.put_blob({"text": "y" * 20000})
    writer.append(RunStarted(graph="g", input={"task": ref}))
    writer.flush()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{store.path}{suffix}", tmp_path / f"copy.sqlite{suffix}")
    store.close()
    found = salvage.scan(tmp_path / "copy.sqlite", tmp_path / "copy.sqlite-wal")
    conn = sqlite3.connect(tmp_path / "copy.sqlite")
    for table in ("events", "blobs", "seals"):
        assert {values for _order, values in found.rows[table]} == {tuple(r) for r in conn.execute(
            f"SELECT * FROM {table}")}, table
    assert {v[0] for _o, v in found.rows["runs"]} == {r[0] for r in conn.execute("SELECT run_id FROM runs")}
    assert found.wal.torn_bytes == 0 and found.wal.valid_frames == found.wal.frames > 0
    conn.close()


@pytest.mark.parametrize("fraction", [0.35, 0.6, 0.93, "mid-page"])
def test_a_store_cut_short_opens_recovered_and_names_what_it_lost(tmp_path, rg_home, fraction):
    path = rg_home / "traces.sqlite"
    rg_home.mkdir(parents=True)
    store = TraceStore(path)
    write_runs(store, 10)
    store.close()  # everything checkpointed into the main file
    original = rows_of(path)
    size = path.stat().st_size
    offset = size - 37 if fraction == "mid-page" else int(size * fraction)
    os.truncate(path, offset)
    cut_bytes = path.read_bytes()

    result = CliRunner().invoke(app, ["trace", "verify"])
    assert result.exit_code == 1
    assert "RECOVERED: the file does not check" in result.output or "RECOVERED" in result.output, result.output
    kept = list(rg_home.glob("traces.sqlite.damaged-*"))
    assert [p.name for p in kept if not p.name.endswith(("-wal", "-shm"))] and \
        next(p for p in kept if not p.name.endswith(("-wal", "-shm"))).read_bytes() == cut_bytes

    store = TraceStore(path)
    assert store.recovered is None  # recovered once, not again
    [recovery] = store.recoveries()
    named = {(run, seq) for run, seqs in recovery["detail"]["events_lost"].items() for seq in seqs}
    report = verify_store(store)
    failed = {r.run_id for r in report.failed}
    now = {(e["run_id"], e["seq"]): e for r in store.all_runs() for e in store.raw_events(r["run_id"])}
    lost = set(original) - set(now)
    assert lost or fraction == "mid-page", "the cut should have destroyed something"
    unproven = {(run, seq) for run, seqs in recovery["detail"]["events_unproven"].items() for seq in seqs}
    assert all(original[k][5] == e["hash"] or k in unproven for k, e in now.items()), "the recovery made up an event"
    for run_id, seq in unproven:  # read off the cut page as stored: named, and the run fails
        assert run_id in failed and f"event {seq} did not match its hash when recovered" in result.output
    assert not [k for k in lost if _present(original[k], [cut_bytes])], "an event still whole in the file was lost"
    assert all(k in named or k[0] in failed for k in lost), "a lost event nobody names"
    for run_id in failed:
        assert f"FAILED run {run_id} at event" in result.output
    assert any("damage:" in r.problem for r in report.failed) or fraction == "mid-page"
    write_runs(store, 1, prefix="after")
    after = verify_run(store, "after0")
    assert after.ok and after.sealed
    store.close()


def test_a_store_cut_short_recovers_even_with_an_event_edited_into_a_json_array(tmp_path, rg_home):
    """An edited body that is JSON but not an object is kept as stored and named, not a crash."""
    path = rg_home / "traces.sqlite"
    rg_home.mkdir(parents=True)
    store = TraceStore(path)
    write_runs(store, 10)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET body='[1]' WHERE run_id='r0' AND seq=1")
    conn.commit()
    conn.close()
    os.truncate(path, path.stat().st_size - 37)  # SQLite still reads every row, the edited one among them

    store = TraceStore(path)  # opened (it raised AttributeError before), recovered
    assert store.recovered is not None
    [recovery] = store.recoveries()
    assert 1 in recovery["detail"]["events_unproven"]["r0"]
    assert "r0" in {r.run_id for r in verify_store(store).failed}
    store.close()


def test_a_file_growing_under_another_process_checkpoint_is_not_called_cut(tmp_path):
    """A checkpoint writes page 1 (the new page count) before the pages that grow the file:
    while others use the store, a file short of its header's count is looked at again."""
    import threading

    from refinegraph.trace import recovery

    store = TraceStore(tmp_path / "t.sqlite")
    write_runs(store, 4)
    store.close()
    path = tmp_path / "t.sqlite"
    whole = path.read_bytes()
    page = int.from_bytes(whole[16:18], "big")
    os.truncate(path, len(whole) - page)  # a page short, as mid-checkpoint
    assert "it was cut" in recovery._cut_short_settled(path, sole=True)  # alone, it is damage at once
    grow = threading.Timer(0.1, lambda: path.write_bytes(whole))
    grow.start()
    assert recovery._cut_short_settled(path, sole=False) is None  # the checkpoint finished meanwhile
    grow.join()


async def test_a_cut_wal_is_recovered_and_the_runs_it_cut_are_named(tmp_path, rg_home):
    rg_home.mkdir(parents=True)
    live = rg_home / "traces.sqlite"
    store = TraceStore(live)
    holder = sqlite3.connect(live)
    holder.execute("SELECT COUNT(*) FROM runs").fetchall()  # keeps the -wal from being checkpointed away
    for i in range(8):
        await run("self-refine", f"task {i}", store=store, models={"local": CountingModel()}, run_id=f"g{i}",
                  checkpoint_path=rg_home / "checkpoints.sqlite")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for name in ("traces.sqlite", "traces.sqlite-wal"):
        shutil.copyfile(rg_home / name, snapshot / name)
    store.close()
    holder.close()  # the last close checkpoints the -wal and deletes it: put the snapshot back
    for name in ("traces.sqlite", "traces.sqlite-wal"):
        shutil.copyfile(snapshot / name, rg_home / name)
    wal = rg_home / "traces.sqlite-wal"
    os.truncate(wal, int(wal.stat().st_size * 0.55) + 7)  # mid-frame

    result = CliRunner().invoke(app, ["trace", "verify"])
    assert result.exit_code == 1 and "RECOVERED: the -wal file ends" in result.output, result.output
    assert list(rg_home.glob("traces.sqlite.damaged-*-wal"))
    del result
    gc.collect()
    store = TraceStore(live)
    report = verify_store(store, trace_marks(rg_home / "checkpoints.sqlite"))
    gone = set(report.runs_lost) | {r.run_id for r in report.failed}
    assert gone and gone <= {f"g{i}" for i in range(8)}
    assert all(r.ok for r in report.runs if r.run_id not in gone)
    again = CliRunner().invoke(app, ["trace", "verify"])
    for run_id in report.runs_lost:
        assert f"LOST run {run_id}" in again.output
    for failed in report.failed:
        assert f"FAILED run {failed.run_id}" in again.output and "checkpoint" in failed.problem
    write_runs(store, 1, prefix="after")
    assert verify_run(store, "after0").ok
    store.close()


def test_damage_found_while_another_user_holds_the_store_is_reported_then_recovered(tmp_path, rg_home):
    rg_home.mkdir(parents=True)
    path = rg_home / "traces.sqlite"
    store = TraceStore(path)
    write_runs(store, 6)
    store.close()
    holder = TraceStore(path)  # another user (its shared lock on traces.sqlite.users)
    os.truncate(path, int(path.stat().st_size * 0.5))
    second = TraceStore(path)
    assert second.recovered is None and second.damage and "does not check" in second.damage
    report = verify_store(second)
    assert not report.ok
    result = CliRunner().invoke(app, ["trace", "verify"])
    assert result.exit_code == 1 and "DAMAGED (not recovered: other processes have the store open" in result.output
    del result  # its traceback holds the command's store open
    gc.collect()
    second.close()
    holder.close()
    third = TraceStore(path)
    assert third.recovered is not None and third.damage is None
    third.close()


def test_a_store_cut_while_a_writer_process_is_active_recovers(tmp_path):
    import random

    section = Section(name="t", ok=True)
    figures = _cut_live(section, tmp_path / "live", "main", random.Random(3))
    assert section.ok, section.problems
    assert figures["opened"] and figures["new_run_verifies"] and figures["recoverable_but_lost"] == 0
    assert figures["events_lost"] == 0 or figures["recovered"] is not None


# -- tampering -----------------------------------------------------------------------------------------


def test_events_swapped_by_seq_are_named_as_reordered(store):
    write_runs(store, 1)
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    for old, new in ((3, -1), (7, 3), (-1, 7)):
        conn.execute("UPDATE events SET seq=? WHERE run_id='r0' AND seq=?", (new, old))
    conn.close()
    report = verify_run(store, "r0")
    assert not report.ok and report.bad_seq == 3 and "holds event 7" in report.problem and "reordered" in report.problem
    result = CliRunner().invoke(app, ["trace", "verify", "r0"])
    assert result.exit_code == 1 and "FAILED at event 3" in result.output and "reordered" in result.output


def test_every_tampering_is_named_by_verify_and_the_cli(tmp_path):
    section = tamper_section(workdir=tmp_path, runs=3)
    assert section.ok, section.problems
    assert section.faults_injected == 8 and section.traces_failed == 0 and section.traces_verified == 8 * 2
    problems = {row["tampering"]: row["problem"] for row in section.figures["tamperings"]}
    assert "reordered" in problems["reorder"] and "spliced" in problems["splice-run"]
    assert "donor-0" in problems["splice-run"] and "cut" in problems["cut-tail"]

