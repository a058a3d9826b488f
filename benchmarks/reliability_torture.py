"""The trace store under ordinary concurrent use and kill -9: the `torture` part of
`refinegraph bench reliability`, and what tests/test_store_concurrency.py runs small.

Writer processes each run graphs through the Python API as apps do (`refinegraph.run`
with no `store=`, and with a store opened and closed per run), a reader process runs
`refinegraph trace list` and `trace verify` in a loop meanwhile, and one writer is killed
with SIGKILL at a random moment. Then: every run a writer saw finish is whole and verifies,
every other run the store lists is resumable (and is resumed, paying no finished call
again), no `disk I/O error` or other store error is seen, and no event is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import child_env
from benchmarks.reliability_common import Section, workdir_for

STORE_ENV = "REFINEGRAPH_TRACE_STORE"


def _delayed_model(delay_s: float) -> Any:
    """A scripted model that answers self-refine's roles after `delay_s` (so a kill lands
    mid-run as often as between runs)."""
    from benchmarks.stub_server import role_of
    from refinegraph.models.scripted import ScriptedModel

    verdict = json.dumps({"correctness": 9, "completeness": 9, "clarity": 9, "score": 9, "verdict": "done",
                          "edits": []})

    def answer(messages: list[dict[str, Any]]) -> str:
        return verdict if role_of(messages) == "critic" else "The answer is 42."

    model = ScriptedModel(answer, name="local")
    real = model.sample

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(delay_s)
        return await real(*args, **kwargs)

    model.sample = slow  # type: ignore[method-assign]
    return model


def writer_main(location: str, worker: int, runs: int, log_path: str, graph: str = "self-refine",
                delay_s: float = 0.002) -> None:
    """A writer process: `runs` runs through the Python API, each id logged once it returned;
    every other run opens and closes a store of its own, the rest use the shared one."""
    os.environ[STORE_ENV] = location
    from refinegraph import run
    from refinegraph.config import Config
    from refinegraph.trace.store import open_store

    model = _delayed_model(delay_s)

    async def one(run_id: str, task: str, own_store: bool) -> Any:
        if not own_store:  # the Python API's default: the process's shared store
            return await run(graph, task, config=Config(), models={"local": model}, run_id=run_id)
        with open_store(location) as store:  # an app that opens and closes a store per run
            return await run(graph, task, config=Config(), models={"local": model}, run_id=run_id, store=store)

    with open(log_path, "a", encoding="utf-8") as log:
        for i in range(runs):
            run_id = f"w{worker}-{i:04d}-{os.getpid()}"
            try:
                result = asyncio.run(one(run_id, f"worker {worker} task {i}", own_store=i % 2 == 1))
                log.write(json.dumps({"run_id": result.run_id, "ok": True}) + "\n")
            except Exception as exc:  # noqa: BLE001 - logged for the parent, which counts it as a failure
                log.write(json.dumps({"run_id": run_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
            log.flush()


def reader_main(location: str, rounds: int, log_path: str) -> None:
    """A reader process: `refinegraph trace list` and `trace verify` in turn, as a user at a
    shell would, each a process of its own; failures logged."""
    env = {**os.environ, STORE_ENV: location}
    exe = [sys.executable, "-m", "refinegraph.cli.app"]
    with open(log_path, "a", encoding="utf-8") as log:
        for i in range(rounds):
            command = ["trace", "list", "--limit", "5"] if i % 2 == 0 else ["trace", "verify", "--json"]
            done = subprocess.run([*exe, *command], env=env, capture_output=True, text=True, timeout=120)
            failed = done.returncode != 0 and not (command[1] == "verify" and done.returncode == 1
                                                   and '"damage": []' in done.stdout)
            log.write(json.dumps({"command": " ".join(command), "rc": done.returncode,
                                  "failed": failed, "stderr": done.stderr[-500:]}) + "\n")
            log.flush()


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def torture(location: str, folder: Path, *, processes: int = 4, runs: int = 30, reader_rounds: int = 8,
            kill: bool = True, seed: int = 0, graph: str = "self-refine") -> dict[str, Any]:
    """Run the writers, the reader and the kill; then judge the store. Returns the figures
    and the problems found (empty when everything held)."""
    from refinegraph.trace.store import open_store

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**child_env(), STORE_ENV: location}
    code = "import sys; from benchmarks.reliability_torture import {0}; {0}(*sys.argv[1:])"
    writers = []
    for w in range(processes):
        args = [location, str(w), str(runs), str(folder / f"writer-{w}.jsonl"), graph]
        writers.append(subprocess.Popen([sys.executable, "-c", code.format("_writer_cli"), *args], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    reader = subprocess.Popen([sys.executable, "-c", code.format("_reader_cli"), location, str(reader_rounds),
                               str(folder / "reader.jsonl")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    killed = None
    if kill:
        victim = rng.randrange(processes)
        target_runs = rng.randrange(1, max(2, runs // 2))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and writers[victim].poll() is None:
            if len(_read_log(folder / f"writer-{victim}.jsonl")) >= target_runs:
                time.sleep(rng.uniform(0.0, 0.05))
                break
            time.sleep(0.01)
        if writers[victim].poll() is None:
            writers[victim].send_signal(signal.SIGKILL)
            killed = victim
    errors = []
    for process in [*writers, reader]:
        _, stderr = process.communicate(timeout=900)
        if process.returncode not in (0, -signal.SIGKILL) and stderr:
            errors.append(stderr.decode(errors="replace")[-500:])
    finished = {row["run_id"] for w in range(processes) for row in _read_log(folder / f"writer-{w}.jsonl")
                if row["ok"]}
    failed_runs = [row for w in range(processes) for row in _read_log(folder / f"writer-{w}.jsonl")
                   if not row["ok"]]
    reads = _read_log(folder / "reader.jsonl")
    problems = [f"run {row['run_id']} failed in its writer: {row['error']}" for row in failed_runs[:10]]
    problems += [f"`{row['command']}` exited {row['rc']}: {row['stderr']}" for row in reads if row["failed"]][:10]
    problems += [f"a process failed: {text}" for text in errors[:5]]
    store = open_store(location)
    try:
        judged = judge_store(store, finished)
    finally:
        store.close()
    problems += judged.pop("problems")
    io_errors = sum("disk I/O error" in p for p in problems)
    return {"location_kind": "postgresql" if location.startswith("postgres") else "sqlite",
            "writers": processes, "runs_per_writer": runs, "reader_commands": len(reads), "killed_writer": killed,
            "runs_finished": len(finished), "runs_failed": len(failed_runs), **judged,
            "disk_io_errors": io_errors, "problems": problems}


def judge_store(store: Any, logged_finished: set[str]) -> dict[str, Any]:
    """Judge the store after the writers: every run a writer logged as finished is there and
    verifies sealed; every other listed run verifies and is resumed, paying no finished call
    again. A run the store holds as finished that no writer logged is one whose writer was
    killed between the store's commit and the log line: it is judged as finished, not resumed.
    """
    from refinegraph.runner import resume
    from refinegraph.trace.verify import verify_run

    problems: list[str] = []
    listed = {row["run_id"]: row for row in store.all_runs()}
    problems += [f"run {run_id} finished in its writer but is not in the store"
                 for run_id in sorted(logged_finished - set(listed))]
    sealed_unlogged = {run_id for run_id, row in listed.items()
                       if row["status"] == "finished" and run_id not in logged_finished}
    verified = events = 0
    for run_id in sorted((logged_finished & set(listed)) | sealed_unlogged):
        report = verify_run(store, run_id)
        events += report.events
        if report.ok and report.sealed:
            verified += 1
        else:
            problems.append(f"finished run {run_id} does not verify sealed: {report.problem}")
    cut = sorted(set(listed) - logged_finished - sealed_unlogged)
    resumed = repaid = 0
    for run_id in cut:
        report = verify_run(store, run_id)
        if not report.ok:
            problems.append(f"cut run {run_id} does not verify: {report.problem}")
            continue
        recorded = sum(e["source"] == "backend" for e in store.events(run_id, types={"llm_call"}))
        result = asyncio.run(resume(run_id, store=store, models={"local": _delayed_model(0.0)}, force=True))
        resumed += 1
        if result.cache_hits < recorded:  # a finished call paid again
            repaid += recorded - result.cache_hits
            problems.append(f"resumed run {run_id} paid {recorded - result.cache_hits} finished calls again")
        after = verify_run(store, run_id)
        if not (after.ok and after.sealed):
            problems.append(f"resumed run {run_id} does not verify sealed: {after.problem}")
        else:
            verified += 1
    problems += [f"a store problem: {line}" for line in store.integrity_problems()]
    return {"runs_listed": len(listed), "runs_sealed_unlogged": len(sealed_unlogged), "runs_cut": len(cut),
            "runs_resumed": resumed, "resumed_repaid_finished_calls": repaid, "traces_verified": verified,
            "events_in_finished_runs": events, "problems": problems}


def _writer_cli(location: str, worker: str, runs: str, log_path: str, graph: str) -> None:
    writer_main(location, int(worker), int(runs), log_path, graph)


def _reader_cli(location: str, rounds: str, log_path: str) -> None:
    reader_main(location, int(rounds), log_path)


def torture_section(*, workdir: Path | None = None, runs: int = 40, processes: int = 4,
                    postgres_dsn: str | None = None) -> Section:
    """The torture on SQLite, and on PostgreSQL where a DSN is given (REFINEGRAPH_PG_DSN)."""
    started = time.perf_counter()
    section = Section(name="torture", ok=True)
    folder = workdir_for(workdir, "torture")
    cases = [("sqlite", str(folder / "sqlite" / "traces.sqlite"))]
    dsn = postgres_dsn or os.environ.get("REFINEGRAPH_PG_DSN")
    if dsn:
        cases.append(("postgresql", _with_schema(dsn, f"rg_torture_{os.getpid()}")))
    rows = []
    for kind, location in cases:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        figures = torture(location, folder / kind, processes=processes, runs=runs)
        rows.append(figures)
        section.runs += figures["runs_listed"]
        section.faults_injected += 1 if figures["killed_writer"] is not None else 0
        section.traces_verified += figures["traces_verified"]
        for problem in figures["problems"]:
            section.expect(False, f"{kind}: {problem}")
    section.figures = {"stores": rows}
    section.lines = [f"- {r['location_kind']}: {r['writers']} writers x {r['runs_per_writer']} runs, "
                     f"{r['reader_commands']} reader commands, writer {r['killed_writer']} killed; "
                     f"{r['runs_finished']} finished, {r['runs_cut']} cut and {r['runs_resumed']} resumed, "
                     f"{r['traces_verified']} verified, {r['disk_io_errors']} disk I/O errors, "
                     f"{len(r['problems'])} problems" for r in rows]
    section.seconds = round(time.perf_counter() - started, 1)
    return section


def _with_schema(dsn: str, schema: str) -> str:
    """The DSN with the trace store's schema as its search path (a fresh one per torture run)."""
    from urllib.parse import quote

    return f"{dsn}{'&' if '?' in dsn else '?'}options={quote(f'-csearch_path={schema}')}"
