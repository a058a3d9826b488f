"""Crashes and tampering: kill -9 of a batch, processes writing one store at once, edits
made around the store. The embedded-model version of the crash is
`benchmarks.reliability_crash.crash_section` (a bench); concurrent use with kill -9
is tests/test_store_concurrency.py.
"""

from __future__ import annotations

import json
import sqlite3

from test_batch import CALLS_PER_RUN
from typer.testing import CliRunner

from benchmarks.reliability_crash import concurrent_writers_section, crash_batch
from benchmarks.reliability_damage import tamper_section
from benchmarks.stub_server import CountingServer, stub_config, stub_reply
from refinegraph.batch import run_batch
from refinegraph.cli.app import app
from refinegraph.events import Fallback, NodeFinished, NodeStarted, RunFinished, RunStarted
from refinegraph.trace.store import TraceStore, TraceWriter
from refinegraph.trace.verify import verify_run

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


# -- processes writing one store at once ---------------------------------------------------------------


def test_four_processes_writing_one_store_lose_no_event():
    section = concurrent_writers_section(processes=4, graph_runs=1, raw_runs=2, events_per_run=40)
    assert section.ok, section.problems
    assert section.runs == 4 * 3 and section.traces_verified == 12 and section.events_lost == 0
    assert section.figures["events_written"] == section.figures["events_found"] > 4 * 2 * 40


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

