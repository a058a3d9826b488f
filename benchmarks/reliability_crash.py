"""Crashes, measured: the `crash` and `concurrent-writers` parts of `refinegraph bench reliability`.

- crash: `refinegraph batch` in a subprocess, killed with SIGKILL midway, then run again
  with the same --out. Requests are counted at the model server (a counting proxy in
  front of the embedded llama.cpp server, or a deterministic stub): after the resume the
  server must see exactly the calls the traces lacked; calls cut mid-flight by the kill
  are counted as re-paid, apart. Every trace verifies, every resumed run replays with 0
  model calls and the same decisions.
- concurrent writers: several processes appending to one store at once; every event a
  process says it committed is found, intact, and every chain verifies.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import spawned_children_find_benchmarks
from benchmarks.reliability_common import Section, workdir_for
from benchmarks.stub_server import CountingServer, stub_reply

# -- crash: kill -9 a batch, resume it -----------------------------------------------------------

SELF_REFINE_PARAMS = {"max_iterations": 1, "solver_max_tokens": 48, "critic_max_tokens": 160,
                      "refiner_max_tokens": 48}
"""Small enough for the embedded model on two cores: 2 to 4 calls a run."""


def write_config(path: Path, base_url: str, model: str = "stub-model") -> Path:
    """A config whose every role is one OpenAI-compatible model at `base_url`."""
    path.write_text(f'[models.m]\nbackend = "openai"\nbase_url = "{base_url}"\nmodel = "{model}"\n\n'
                    '[roles]\ndefault = "m"\n', encoding="utf-8")
    return path


def write_inputs(path: Path, runs: int) -> dict[str, str]:
    """`runs` self-refine tasks as JSONL; returns id -> task."""
    tasks = {f"q{i}": f"Task {i}: what is {i} + {2 * i + 3}? Answer with the number." for i in range(runs)}
    path.write_text("".join(json.dumps({"id": k, "task": v}) + "\n" for k, v in tasks.items()), encoding="utf-8")
    return tasks


def batch_command(inputs: Path, out: Path, config: Path, *, graph: str, params: dict[str, Any],
                  concurrency: int) -> list[str]:
    """`refinegraph batch ...` as a fresh interpreter runs it."""
    command = [sys.executable, "-m", "refinegraph.cli.app", "batch", str(inputs), "--graph", graph,
               "--config", str(config), "--concurrency", str(concurrency), "--out", str(out), "--json"]
    for key, value in params.items():
        command += ["-p", f"{key}={json.dumps(value)}"]
    return command


def _spawn(command: list[str], home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "REFINEGRAPH_HOME": str(home)}
    handle = log.open("ab")
    try:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)  # noqa: S603
    finally:
        handle.close()


def _task_of(body: dict[str, Any], tasks: dict[str, str]) -> str | None:
    """The input id a request was made for (its task text is in the prompt)."""
    text = json.dumps(body["messages"])
    found = [ident for ident, task in tasks.items() if json.dumps(task)[1:-1] in text]
    return found[0] if len(found) == 1 else None


def _read_results(out: Path) -> dict[str, dict[str, Any]]:
    from refinegraph.batch.outdir import read_jsonl

    return {row["id"]: row for row in read_jsonl(out / "results.jsonl")}


def _recorded_backend_requests(home: Path) -> int:
    """Model requests the store holds as finished (llm_call events answered by a backend)."""
    from refinegraph.trace.store import TraceStore

    store = TraceStore(home / "traces.sqlite")
    try:
        total = 0
        for run in store.all_runs():
            for event in store.events(run["run_id"], types={"llm_call"}):
                if event["source"] == "backend":
                    total += event["requests"]
        return total
    finally:
        store.close()


async def crash_batch(workdir: Path, server: CountingServer, *, runs: int, kill_after: int, hold: bool = False,
                      concurrency: int = 4, graph: str = "self-refine", params: dict[str, Any] | None = None,
                      settle_s: float = 0.5, timeout_s: float = 600.0,
                      reference: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Start `refinegraph batch`, SIGKILL it once the server has seen `kill_after` requests
    (with `hold`: once a request beyond them is held unanswered, after `settle_s`), then run
    the same command again and check what a resume promises. Returns figures and problems.

    `reference`: id -> answer of an uninterrupted batch (a deterministic server): the
    resumed batch's answers must equal it.
    """
    from refinegraph.runner import replay
    from refinegraph.trace.store import TraceStore
    from refinegraph.trace.verify import verify_store

    params = SELF_REFINE_PARAMS if params is None else params
    workdir.mkdir(parents=True, exist_ok=True)
    home, out = workdir / "home", workdir / "out"
    tasks = write_inputs(workdir / "inputs.jsonl", runs)
    config = write_config(workdir / "config.toml", server.url)
    command = batch_command(workdir / "inputs.jsonl", out, config, graph=graph, params=params,
                            concurrency=concurrency)
    problems: list[str] = []
    start = server.count()
    if hold:
        server.hold_from(start + kill_after + 1)
    first = _spawn(command, home, workdir / "batch.log")
    deadline = time.monotonic() + timeout_s
    while first.poll() is None and time.monotonic() < deadline:
        if (server.holding.is_set() if hold else server.count() - start >= kill_after):
            break
        await asyncio.sleep(0.005)
    if hold and server.holding.is_set():
        await asyncio.sleep(settle_s)  # answered calls commit; every worker ends up waiting on a held one
    killed_at = time.monotonic()
    exited_early = first.poll() is not None
    if not exited_early:
        first.send_signal(signal.SIGKILL)
    first.wait()
    held = server.held if hold else 0
    server.release()
    problems += [] if not exited_early else [f"the batch ended (exit {first.returncode}) before it was killed"]
    requests_before = server.count() - start
    in_flight = server.in_flight_at(killed_at)
    done_before = {i for i, r in _read_results(out).items() if r["status"] == "finished"}
    finished_before = _recorded_backend_requests(home)

    second = _spawn(command, home, workdir / "batch.log")
    try:
        second.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait()
        problems.append("the resumed batch did not finish in time")
    after = server.received[start + requests_before:]
    requests_after = len(after)
    rows = _read_results(out)
    needed = sum(r["calls"] for r in rows.values())
    rerun = sorted({_task_of(body, tasks) for body in after} & done_before)
    figures: dict[str, Any] = {
        "runs": runs, "killed_after_requests": requests_before, "runs_finished_before_kill": len(done_before),
        "calls_finished_before_kill": finished_before, "calls_in_flight_at_kill": in_flight, "held_at_kill": held,
        "requests_after_resume": requests_after, "calls_needed": needed,
        "re_paid": requests_before - finished_before, "resume_exit_code": second.returncode,
    }
    unfinished = sorted(i for i in tasks if rows.get(i, {}).get("status") != "finished")
    if unfinished:
        problems.append(f"{len(unfinished)} inputs not finished after the resume: {unfinished[:5]}")
    if rerun:
        problems.append(f"runs that had finished were run again: {rerun[:5]}")
    if requests_after != needed - finished_before:
        problems.append(f"after the resume the server saw {requests_after} requests; the traces lacked "
                        f"{needed - finished_before} ({needed} needed - {finished_before} finished before the kill)")
    if figures["re_paid"] > (held if hold else concurrency):
        problems.append(f"{figures['re_paid']} calls re-paid, more than the {held if hold else concurrency} "
                        "that can have been in flight")
    if hold and figures["re_paid"] != held:
        problems.append(f"{figures['re_paid']} calls re-paid, but {held} were in flight (held) at the kill")

    store = TraceStore(home / "traces.sqlite")
    replays = {"replayed": 0, "matched": 0, "model_calls": 0}
    try:
        checked = verify_store(store)
        verified, failed = len(checked.runs) - len(checked.failed), len(checked.failed)
        problems += [f"run {r.run_id} does not verify: event {r.bad_seq}: {r.problem}" for r in checked.failed]
        resumed = {i: r for i, r in rows.items() if r.get("resumed")}
        for ident, row in sorted(resumed.items()):
            result = await replay(row["run_id"], store=store)
            replays["replayed"] += 1
            replays["model_calls"] += result.model_calls
            if result.model_calls == 0 and result.decisions_match and result.answer_matches \
                    and result.answer == row["answer"]:
                replays["matched"] += 1
            else:
                problems.append(f"replay of {ident} ({row['run_id']}): model_calls={result.model_calls} "
                                f"decisions_match={result.decisions_match} answer_matches={result.answer_matches}")
    finally:
        store.close()
    figures.update(traces_verified=verified, traces_failed=failed, runs_resumed=len(resumed), **{
        f"replay_{k}": v for k, v in replays.items()})
    if reference is not None:
        differing = sorted(i for i in tasks if rows.get(i, {}).get("answer") != reference.get(i))
        figures["answers_equal_uninterrupted"] = len(tasks) - len(differing)
        if differing:
            problems.append(f"{len(differing)} answers differ from an uninterrupted batch's: {differing[:5]}")
    return {"figures": figures, "problems": problems}


EMBEDDED_PARAMS = {"max_iterations": 0, "solver_max_tokens": 32, "critic_max_tokens": 96}
"""Self-refine as solve + critique (2 calls a run): 50 runs fit in minutes on two busy cores."""


async def crash_section(runs: int = 50, *, workdir: Path | None = None, concurrency: int = 4, seed: int = 0,
                        params: dict[str, Any] | None = None, threads: int | None = 1,
                        timeout_s: float = 3600.0) -> Section:
    """`refinegraph batch` of `runs` self-refine runs on the embedded model (through a
    counting proxy), SIGKILLed at a random request in the middle, then resumed. `threads`:
    the embedded server's CPU threads, 1 by default: llama.cpp's threads spin-wait, and on
    cores busy with other work that made calls 10 times slower; the figures are counts."""
    from refinegraph.models.local import ensure_server

    started = time.perf_counter()
    section = Section(name="crash", ok=True)
    folder = workdir_for(workdir, "crash")
    address, _parallel = ensure_server(n_parallel=concurrency, threads=threads)
    rng = random.Random(seed)
    params = EMBEDDED_PARAMS if params is None else params
    kill_after = rng.randint(max(1, runs // 2), max(2, 3 * runs // 2))  # 2 calls a run: about the middle
    with CountingServer(upstream=address) as server:
        outcome = await crash_batch(Path(tempfile.mkdtemp(prefix="batch-", dir=folder)), server, runs=runs,
                                    kill_after=kill_after,
                                    concurrency=concurrency, params=params, timeout_s=timeout_s)
    f = outcome["figures"]
    for problem in outcome["problems"]:
        section.expect(False, problem)
    section.runs = runs + f["replay_replayed"]
    section.faults_injected = 1
    section.traces_verified, section.traces_failed = f["traces_verified"], f["traces_failed"]
    section.figures = f
    section.lines = [
        f"- `refinegraph batch` of {runs} self-refine runs (embedded SmolLM2-135M, {params}, concurrency "
        f"{concurrency}), "
        f"SIGKILL after {f['killed_after_requests']} requests: {f['runs_finished_before_kill']} runs had finished, "
        f"{f['calls_finished_before_kill']} calls were recorded, {f['calls_in_flight_at_kill']} unanswered at the "
        "kill",
        f"- resumed with the same command: {f['requests_after_resume']} requests = {f['calls_needed']} calls needed "
        f"- {f['calls_finished_before_kill']} finished before the kill; {f['re_paid']} re-paid (cut mid-flight); "
        f"{f['runs_resumed']} runs resumed, none of the finished ones run again",
        f"- traces: {f['traces_verified']} verify, {f['traces_failed']} fail; replays of the resumed runs: "
        f"{f['replay_matched']}/{f['replay_replayed']} with 0 model calls, the same decisions and answer",
    ]
    section.seconds = round(time.perf_counter() - started, 1)
    return section


# -- concurrent writers ------------------------------------------------------------------------------


def _writer_process(store_path: str, checkpoints: str, base_url: str, worker: int, graph_runs: int,
                    raw_runs: int, events_per_run: int, report: str, barrier: Any) -> None:
    """One of the writing processes: graph runs through refinegraph.run, then runs of raw
    appends (each event committed at once); writes what it committed to `report`."""
    from refinegraph.config import Config, ModelSpec
    from refinegraph.events import Fallback, RunFinished, RunStarted
    from refinegraph.runner import run
    from refinegraph.trace import store as store_module
    from refinegraph.trace.store import TraceStore, TraceWriter

    counts: dict[str, int] = {}

    def observe(writer: Any, event: Any) -> None:
        counts[writer.run_id] = counts.get(writer.run_id, 0) + 1

    store_module.OBSERVERS.append(observe)
    config = Config(models={"m": ModelSpec(backend="openai", base_url=base_url, model="stub-model")},
                    roles={"default": "m"})
    store = TraceStore(store_path)
    barrier.wait()
    started = time.perf_counter()

    async def graph_work() -> None:
        for i in range(graph_runs):
            await run("self-refine", f"worker {worker} task {i}", config=config, store=store,
                      checkpoint_path=Path(checkpoints), run_id=f"w{worker}-graph-{i}")

    asyncio.run(graph_work())
    store_module.OBSERVERS.remove(observe)
    for i in range(raw_runs):
        writer = TraceWriter(store, f"w{worker}-raw-{i}", new=True)
        writer.create_run("raw", f"worker {worker} raw {i}")
        writer.append(RunStarted(graph="raw", input={"task": f"{worker}/{i}"}))
        for k in range(events_per_run):
            writer.append(Fallback(kind="probe", reason=f"worker {worker} run {i} event {k}", detail="x" * (k % 50)))
        writer.append(RunFinished(answer=str(i), stop_reason="done", usage={}, model_calls=0, cache_hits=0))
        writer.seal("finished", "done", str(i))
        counts[writer.run_id] = writer.written
    store.close()
    Path(report).write_text(json.dumps({"counts": counts, "seconds": time.perf_counter() - started}),
                            encoding="utf-8")


def concurrent_writers_section(processes: int = 4, *, workdir: Path | None = None, graph_runs: int = 10,
                               raw_runs: int = 10, events_per_run: int = 100) -> Section:
    """`processes` processes writing to one store (and one checkpoint file) at once: graph
    runs against a stub server, then raw appends. Every committed event must be found, in
    its chain, and every chain must verify."""
    from refinegraph.trace.store import TraceStore
    from refinegraph.trace.verify import verify_run

    started = time.perf_counter()
    section = Section(name="concurrent-writers", ok=True)
    folder = workdir_for(workdir, "writers")
    store_path, checkpoints = folder / "traces.sqlite", folder / "checkpoints.sqlite"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with CountingServer(stub_reply) as server:
        workers = [context.Process(target=_writer_process, args=(
            str(store_path), str(checkpoints), server.url, w, graph_runs, raw_runs, events_per_run,
            str(folder / f"worker-{w}.json"), barrier)) for w in range(processes)]
        with spawned_children_find_benchmarks():
            for worker in workers:
                worker.start()
        for worker in workers:
            worker.join(900)
        requests = server.count()
    exits = [w.exitcode for w in workers]
    section.expect(all(code == 0 for code in exits), f"writer exit codes {exits}")
    expected: dict[str, int] = {}
    seconds = []
    for w in range(processes):
        report = folder / f"worker-{w}.json"
        if section.expect(report.is_file(), f"worker {w} wrote no report"):
            data = json.loads(report.read_text(encoding="utf-8"))
            expected.update(data["counts"])
            seconds.append(data["seconds"])
    store = TraceStore(store_path)
    found_total = verified = failed = 0
    short = []
    try:
        listed = {row["run_id"] for row in store.all_runs()}
        for run_id, count in sorted(expected.items()):
            found = len(store.raw_events(run_id))
            found_total += found
            if found != count:
                short.append(f"{run_id}: {count} written, {found} found")
            report = verify_run(store, run_id)
            if report.ok and report.sealed:
                verified += 1
            else:
                failed += 1
                section.expect(False, f"run {run_id}: event {report.bad_seq}: {report.problem}")
        strangers = sorted(listed - set(expected))
    finally:
        store.close()
    written = sum(expected.values())
    section.expect(not short, f"events lost: {short[:5]}")
    section.expect(not strangers, f"runs in the store no process wrote: {strangers[:5]}")
    section.runs = len(expected)
    section.traces_verified, section.traces_failed = verified, failed
    section.events_lost = max(0, written - found_total)
    rate = written / max(seconds) if seconds else 0.0
    section.figures = {"processes": processes, "runs": len(expected), "events_written": written,
                       "events_found": found_total, "model_requests": requests, "exit_codes": exits,
                       "events_per_s": round(rate, 1)}
    section.lines = [
        f"- {processes} processes writing to one store at once: {len(expected)} runs ({graph_runs} self-refine runs "
        f"on a stub server and {raw_runs} runs of {events_per_run} raw appends each, per process), "
        f"{written} events written, {found_total} found, {failed} chains broken; {rate:.0f} events/s together",
    ]
    section.seconds = round(time.perf_counter() - started, 1)
    return section


