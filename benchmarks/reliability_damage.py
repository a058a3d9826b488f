"""Trace-store tampering, measured: the `tamper` part of `refinegraph bench reliability`.

An event edited, deleted, reordered, a chain spliced from another store's run: each must
be named by `verify_run` (and `refinegraph trace verify`). Damage to the file itself is
SQLite's to detect (quick_check, which `trace verify` runs); crashes and concurrent use
are the `torture` part (reliability_torture).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from benchmarks.reliability_common import Section, workdir_for
from benchmarks.stub_server import CountingServer, stub_config, stub_reply

# -- stores to damage -----------------------------------------------------------------------------------


async def build_store(path: Path, server: CountingServer, runs: int, *, prefix: str = "run") -> list[str]:
    """`runs` self-refine runs on `server` into the store at `path` (closed at the end)."""
    from refinegraph.runner import run
    from refinegraph.trace.store import TraceStore

    store = TraceStore(path)
    config = stub_config(server)
    ids = []
    try:
        for i in range(runs):
            result = await run("self-refine", f"{prefix} task {i}", config=config, store=store,
                               run_id=f"{prefix}-{i}")
            ids.append(result.run_id)
    finally:
        store.close()
    return ids


def copy_store(source: Path, target: Path) -> None:
    """A whole copy of a store through SQLite's backup: copying the main file alone misses
    what its -wal still holds (all of it, while another connection keeps it from a checkpoint)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def event_rows(path: Path) -> dict[tuple[str, int], tuple]:
    """(run_id, seq) -> the event row, read with plain sqlite3 from a store that is whole."""
    conn = sqlite3.connect(path)
    try:
        return {(r[0], r[1]): tuple(r) for r in conn.execute("SELECT run_id, seq, type, body, prev_hash, hash "
                                                             "FROM events")}
    finally:
        conn.close()


# -- tampering -----------------------------------------------------------------------------------------


def _around(path: Path) -> sqlite3.Connection:
    """A connection that goes around the store (its append-only triggers dropped), as
    someone editing the file would."""
    conn = sqlite3.connect(path, isolation_level=None)
    for trigger in ("events_no_update", "events_no_delete", "seals_no_update", "seals_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    return conn


def _tamper(kind: str, conn: sqlite3.Connection, run_id: str, donor: Path, donor_run: str,
            other_run: str) -> tuple[int, str]:
    """Apply one tampering to `run_id`; returns (the event verify must name, a word its
    problem must hold)."""
    count = conn.execute("SELECT COUNT(*) FROM events WHERE run_id=?", (run_id,)).fetchone()[0]
    if kind == "edit":
        body = conn.execute("SELECT body FROM events WHERE run_id=? AND seq=3", (run_id,)).fetchone()[0]
        changed = body.replace('"ok"', '"OK"', 1) if '"ok"' in body else body.replace("0", "1", 1)
        conn.execute("UPDATE events SET body=? WHERE run_id=? AND seq=3", (changed, run_id))
        return 3, "altered"
    if kind == "delete":
        conn.execute("DELETE FROM events WHERE run_id=? AND seq=4", (run_id,))
        return 4, "missing"
    if kind == "reorder":
        conn.execute("UPDATE events SET seq=-1 WHERE run_id=? AND seq=2", (run_id,))
        conn.execute("UPDATE events SET seq=2 WHERE run_id=? AND seq=5", (run_id,))
        conn.execute("UPDATE events SET seq=5 WHERE run_id=? AND seq=-1", (run_id,))
        return 2, "reordered"
    if kind == "splice-run":  # the run's whole chain replaced by another store's run
        conn.execute("DELETE FROM events WHERE run_id=?", (run_id,))
        source = sqlite3.connect(donor)
        rows = source.execute("SELECT seq, type, body, prev_hash, hash FROM events WHERE run_id=? ORDER BY seq",
                              (donor_run,)).fetchall()
        source.close()
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", [(run_id, *row) for row in rows])
        return 0, "spliced"
    if kind == "splice-event":  # one event taken from another run of the store
        row = conn.execute("SELECT type, body, prev_hash, hash FROM events WHERE run_id=? AND seq=6",
                           (other_run,)).fetchone()
        conn.execute("UPDATE events SET type=?, body=?, prev_hash=?, hash=? WHERE run_id=? AND seq=6", (*row, run_id))
        return 6, "spliced"
    if kind == "cut-tail":
        conn.execute("DELETE FROM events WHERE run_id=? AND seq>=?", (run_id, count - 2))
        return count - 2, "cut"
    if kind == "blob":
        body = conn.execute("SELECT body FROM events WHERE run_id=? AND type='llm_call' ORDER BY seq LIMIT 1",
                            (run_id,)).fetchone()[0]
        seq = json.loads(body)["seq"]
        digest = json.loads(body)["response_blob"]
        conn.execute("UPDATE blobs SET data=? WHERE digest=?", (b'{"texts":["forged"]}', digest))
        return seq, "blob"
    if kind == "listing":
        conn.execute("UPDATE runs SET answer_preview='forged' WHERE run_id=?", (run_id,))
        return count - 1, "listing"
    raise ValueError(f"unknown tampering {kind!r}")


TAMPERINGS = ("edit", "delete", "reorder", "splice-run", "splice-event", "cut-tail", "blob", "listing")


def tamper_section(*, workdir: Path | None = None, runs: int = 4) -> Section:
    """Each tampering on a copy of a store of `runs` self-refine runs: `verify_run` and
    `refinegraph trace verify` must fail at the right event and name what was done; the
    untouched runs must still verify."""
    from typer.testing import CliRunner

    from refinegraph.cli.app import app
    from refinegraph.trace.store import TraceStore
    from refinegraph.trace.verify import verify_run

    started = time.perf_counter()
    section = Section(name="tamper", ok=True)
    folder = workdir_for(workdir, "tamper")
    whole, donor = folder / "whole" / "traces.sqlite", folder / "donor" / "traces.sqlite"
    whole.parent.mkdir(parents=True, exist_ok=True)
    donor.parent.mkdir(parents=True, exist_ok=True)
    with CountingServer(stub_reply) as server:
        ids = asyncio.run(build_store(whole, server, runs))
        [donor_run] = asyncio.run(build_store(donor, server, 1, prefix="donor"))
    target, other = ids[0], ids[1]
    rows = []
    for kind in TAMPERINGS:
        case = folder / kind / "traces.sqlite"
        case.parent.mkdir(parents=True, exist_ok=True)
        copy_store(whole, case)
        conn = _around(case)
        try:
            bad_seq, word = _tamper(kind, conn, target, donor, donor_run, other)
        finally:
            conn.close()
        section.faults_injected += 1
        store = TraceStore(case)
        try:
            report = verify_run(store, target)
            untouched = [verify_run(store, run_id) for run_id in ids if run_id != target]
        finally:
            store.close()
        cli = CliRunner().invoke(app, ["trace", "verify", target], env={"REFINEGRAPH_HOME": str(case.parent)})
        every = CliRunner().invoke(app, ["trace", "verify"], env={"REFINEGRAPH_HOME": str(case.parent)})
        named = not report.ok and report.bad_seq == bad_seq and word in (report.problem or "")
        cli_named = cli.exit_code == 1 and f"event {bad_seq}" in cli.output and word in cli.output
        all_named = every.exit_code == 1 and f"FAILED run {target} at event {bad_seq}" in every.output
        section.expect(named, f"{kind}: verify_run said ok={report.ok} at event {report.bad_seq}: {report.problem}")
        section.expect(cli_named, f"{kind}: `refinegraph trace verify {target}` printed: {cli.output.strip()[:300]}")
        section.expect(all_named, f"{kind}: `refinegraph trace verify` printed: {every.output.strip()[:300]}")
        section.traces_failed += 0 if named else 1
        for other_report in untouched:
            if other_report.ok:
                section.traces_verified += 1
            else:
                section.traces_failed += 1
                section.expect(False, f"{kind}: untouched run {other_report.run_id} fails: {other_report.problem}")
        rows.append({"tampering": kind, "detected": named and cli_named and all_named, "bad_seq": report.bad_seq,
                     "problem": report.problem})
    section.runs = runs + 1
    section.figures = {"tamperings": rows}
    section.lines = [f"- {r['tampering']}: {'named' if r['detected'] else 'NOT named'} at event {r['bad_seq']}: "
                     f"\"{r['problem']}\"" for r in rows]
    section.seconds = round(time.perf_counter() - started, 1)
    return section
