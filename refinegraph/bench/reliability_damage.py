"""Trace-store damage, measured: the `truncation` and `tamper` parts of `refinegraph bench reliability`.

- truncation: the store file and, apart, its -wal file cut at several offsets; the store
  must still open (recovered: see TraceStore), new runs must still write, and
  `verify_store` must name what the damage broke.
- tamper: an event edited, deleted, reordered, a chain spliced from another store's run;
  each must be named by `verify_run` (and `refinegraph trace verify`).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from refinegraph.bench.reliability_common import Section, workdir_for
from refinegraph.bench.stub_server import CountingServer, stub_config, stub_reply

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
                               checkpoint_path=path.with_name(path.stem + ".checkpoints.sqlite"),
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


def _present(row: tuple, blobs: list[bytes]) -> bool:
    """Whether an event row survives whole in the bytes of a (cut) file: its body and hashes
    are stored one after another in its record."""
    needle = row[3].encode() + row[4].encode() + row[5].encode()
    return any(needle in data for data in blobs)


# -- truncation --------------------------------------------------------------------------------------


def _raw_writer(store_path: str, log_path: str, stop_after: int) -> None:
    """A writer process: runs of events, each committed at once and then logged (a JSON
    line with the stored row), until killed or `stop_after` events."""
    from refinegraph.events import Fallback, RunFinished, RunStarted
    from refinegraph.trace.chain import event_body
    from refinegraph.trace.store import TraceStore, TraceWriter

    store = TraceStore(store_path)
    written = 0
    with open(log_path, "a", encoding="utf-8") as log:
        for i in range(10 ** 6):
            writer = TraceWriter(store, f"live-{os.getpid()}-{i}", new=True)
            writer.create_run("raw", f"live {i}")
            events = [RunStarted(graph="raw", input={"task": str(i)})]
            events += [Fallback(kind="probe", reason=f"run {i} event {k}", detail="y" * (k * 7 % 90))
                       for k in range(12)]
            for event in events:
                prev = writer.last_hash
                writer.append(event)  # node None: committed at once
                log.write(json.dumps([writer.run_id, event.seq, event.type, event_body(event), prev,  # type: ignore[attr-defined]
                                      writer.last_hash]) + "\n")
                log.flush()
                written += 1
            prev = writer.last_hash
            end = writer.append(RunFinished(answer=str(i), stop_reason="done", usage={}, model_calls=0, cache_hits=0))
            writer.seal("finished", "done", str(i))  # commits run_finished with the seal
            log.write(json.dumps([writer.run_id, end.seq, end.type, event_body(end), prev,  # type: ignore[attr-defined]
                                  writer.last_hash]) + "\n")
            log.flush()
            written += 1
            if written >= stop_after:
                break
    store.close()


def _cut(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(offset)


def _judge_cut(section: Section, label: str, store_path: Path, original: dict[tuple[str, int], tuple],
               files_after_cut: list[bytes], checkpoints: Path | None = None) -> dict[str, Any]:
    """Open the cut store (recovering it), verify it (with the trace marks of `checkpoints`),
    write a new run: the figures of one cut."""
    from refinegraph.events import RunFinished, RunStarted
    from refinegraph.runner import trace_marks
    from refinegraph.trace.chain import genesis_hash
    from refinegraph.trace.store import TraceStore, TraceStoreError, TraceWriter
    from refinegraph.trace.verify import verify_run, verify_store

    figures: dict[str, Any] = {"cut": label}
    try:
        store = TraceStore(store_path)
    except TraceStoreError as exc:
        section.expect(False, f"{label}: the store does not open: {exc}")
        figures["opened"] = False
        return figures
    try:
        here = str(store_path.resolve())  # a copy of the store the checkpoints name
        marks = {run: mark._replace(store=here) for run, mark in trace_marks(checkpoints).items()} \
            if checkpoints else None
        report = verify_store(store, marks)
        kept = {(e["run_id"], e["seq"]): e for run in store.all_runs() for e in store.raw_events(run["run_id"])}
        recovered = store.recovered
        detail = recovered["detail"] if recovered else {}
        named = {(run, seq) for run, seqs in detail.get("events_lost", {}).items() for seq in seqs}
        flagged = {r.run_id for r in report.failed}
        lost = set(original) - set(kept)
        unlogged = [k for k, e in kept.items() if k not in original and e["prev_hash"] == (
            genesis_hash(k[0]) if k[1] == 0 else original.get((k[0], k[1] - 1), (None,) * 6)[5])]
        # ^ committed, its log line lost to the kill: it continues what the log shows
        unproven = {(run, seq) for run, seqs in detail.get("events_unproven", {}).items() for seq in seqs}
        bogus = [k for k, e in kept.items() if (k not in original and k not in unlogged)
                 or (k in original and original[k][5] != e["hash"] and k not in unproven)]
        # ^ an event SQLite still read off a damaged page is kept as stored, and named unproven
        recoverable_lost = [k for k in lost if _present(original[k], files_after_cut)]
        flagged |= set(report.runs_lost)
        unattributed = [k for k in lost if k not in named and k[0] not in flagged]
        writer = TraceWriter(store, f"after-{label}", new=True)
        writer.create_run("raw", "after the cut")
        writer.append(RunStarted(graph="raw", input={"task": "after"}))
        writer.append(RunFinished(answer="ok", stop_reason="done", usage={}, model_calls=0, cache_hits=0))
        writer.seal("finished", "done", "ok")
        after = verify_run(store, f"after-{label}")
        figures.update(opened=True, recovered=detail.get("kind"), events_before=len(original),
                       events_kept=len(set(original) & set(kept)), events_lost=len(lost),
                       events_named_lost=len(lost & named), runs_flagged=len(flagged),
                       events_lost_unattributed=len(unattributed), recoverable_but_lost=len(recoverable_lost),
                       bogus=len(bogus), committed_unlogged=len(unlogged), runs_lost=len(report.runs_lost),
                       new_run_verifies=after.ok and after.sealed,
                       pages_missing=detail.get("pages_missing", 0))
        section.expect(after.ok and after.sealed, f"{label}: a new run does not write and verify: {after.problem}")
        section.expect(not recoverable_lost, f"{label}: {len(recoverable_lost)} events still whole in the cut "
                                             f"files were not recovered, e.g. {sorted(recoverable_lost)[:3]}")
        section.expect(not bogus, f"{label}: {len(bogus)} events in the recovered store were never written")
        section.expect(len(unlogged) <= 1, f"{label}: {len(unlogged)} events beyond the writer's log")
        section.expect(not lost or recovered is not None or bool(flagged),
                       f"{label}: {len(lost)} events lost and nothing reported")
        section.traces_verified += sum(1 for r in report.runs if r.ok)
        section.events_lost += len(recoverable_lost)
    finally:
        store.close()
    return figures


def truncation_section(*, workdir: Path | None = None, runs: int = 12, cuts: int = 4, seed: int = 0) -> Section:
    """The store file, and apart its -wal, cut at `cuts` random offsets each, after writing
    and while a writer process is active: the store must open (recovered), a new run must
    write, no event still whole in the cut files may be lost, the damage must be reported."""
    started = time.perf_counter()
    section = Section(name="truncation", ok=True)
    folder = workdir_for(workdir, "truncation")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    with CountingServer(stub_reply) as server:
        main = folder / "whole-main" / "traces.sqlite"
        main.parent.mkdir(parents=True, exist_ok=True)
        asyncio.run(build_store(main, server, runs))  # closed: everything in the main file
        wal = folder / "whole-wal" / "traces.sqlite"
        wal.parent.mkdir(parents=True, exist_ok=True)
        asyncio.run(build_store(wal, server, runs // 2, prefix="old"))
        conn = sqlite3.connect(wal)  # held open so the -wal keeps the next runs' commits
        conn.execute("SELECT COUNT(*) FROM runs").fetchall()  # reading keeps the file open
        asyncio.run(build_store(wal, server, runs - runs // 2, prefix="new"))
        copies = {"main": (main, ""), "wal": (wal, "-wal")}
        for target, (source, suffix) in copies.items():
            original = event_rows(source)
            size = Path(f"{source}{suffix}").stat().st_size
            for n in range(cuts):
                offset = rng.randrange(1, size)
                case = folder / f"{target}-cut-{n}" / "traces.sqlite"
                case.parent.mkdir(parents=True, exist_ok=True)
                for extra in ("", "-wal"):
                    if Path(f"{source}{extra}").exists():
                        shutil.copyfile(f"{source}{extra}", f"{case}{extra}")
                checkpoints = source.with_name(source.stem + ".checkpoints.sqlite")
                shutil.copyfile(checkpoints, case.with_name(checkpoints.name))
                _cut(Path(f"{case}{suffix}"), offset)
                files = [Path(f"{case}{e}").read_bytes() for e in ("", "-wal") if Path(f"{case}{e}").exists()]
                rows.append({**_judge_cut(section, f"{target} cut at byte {offset} of {size}", case, original,
                                          files, case.with_name(checkpoints.name)),
                             "target": target, "when": "after writing"})
                section.faults_injected += 1
        conn.close()
    for target in ("main", "wal"):
        for n in range(max(1, cuts // 2)):
            rows.append({**_cut_live(section, folder / f"live-{target}-{n}", target, rng), "target": target,
                         "when": "writer active"})
            section.faults_injected += 1
    section.runs = runs * 2
    section.figures = {"cuts": rows}
    section.lines = [_cut_line(r) for r in rows]
    section.seconds = round(time.perf_counter() - started, 1)
    return section


def _cut_live(section: Section, folder: Path, target: str, rng: random.Random) -> dict[str, Any]:
    """Cut the store (main file or -wal) while a writer process appends to it, then SIGKILL
    the writer (as the crash that often comes with such damage) and judge what is left."""
    folder.mkdir(parents=True, exist_ok=True)
    store_path, log = folder / "traces.sqlite", folder / "committed.jsonl"
    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=_raw_writer, args=(str(store_path), str(log), 10 ** 9))
    writer.start()
    deadline = time.monotonic() + 120
    want = rng.randint(300, 900)
    while time.monotonic() < deadline and (not log.exists() or log.stat().st_size < want * 200):
        time.sleep(0.02)
    victim = Path(f"{store_path}{'-wal' if target == 'wal' else ''}")
    size = victim.stat().st_size if victim.exists() else 0
    offset = rng.randrange(1, size) if size > 1 else 0
    _cut(victim, offset)
    time.sleep(0.2)
    writer.kill()
    writer.join()
    committed = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            row = tuple(json.loads(line))
        except ValueError:  # a line the kill cut short: its event was committed, not logged
            continue
        committed[(row[0], row[1])] = row
    files = [Path(f"{store_path}{e}").read_bytes() for e in ("", "-wal") if Path(f"{store_path}{e}").exists()]
    return _judge_cut(section, f"{target} cut at byte {offset} of {size} while a writer was active", store_path,
                      committed, files)


def _cut_line(r: dict[str, Any]) -> str:
    if not r.get("opened"):
        return f"- {r['cut']}: the store did NOT open"
    return (f"- {r['cut']} ({r['when']}): opened, recovered: {r['recovered'] or 'nothing to do'}; events "
            f"{r['events_kept']}/{r['events_before']} kept, {r['events_lost']} lost ({r['events_named_lost']} named by "
            f"the recovery, {r['events_lost_unattributed']} in no flagged run), {r['recoverable_but_lost']} lost that "
            f"were still whole in the cut files; {r['runs_flagged']} runs flagged by verify; new run verifies: "
            f"{r['new_run_verifies']}")


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
