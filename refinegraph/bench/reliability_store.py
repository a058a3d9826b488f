"""Crashes and trace-store damage, measured: the store part of `refinegraph bench reliability`.

Four sections, each a `Section` (refinegraph.bench.reliability_common):

- crash: `refinegraph batch` in a subprocess, killed with SIGKILL midway, then run again
  with the same --out. Requests are counted at the model server (a counting proxy in
  front of the embedded llama.cpp server, or a deterministic stub): after the resume the
  server must see exactly the calls the traces lacked; calls cut mid-flight by the kill
  are counted as re-paid, apart. Every trace verifies, every resumed run replays with 0
  model calls and the same decisions.
- concurrent writers: several processes appending to one store at once; every event a
  process says it committed is found, intact, and every chain verifies.
- truncation: the store file and, apart, its -wal file cut at several offsets; the store
  must still open (recovered: see TraceStore), new runs must still write, and
  `verify_store` must name what the damage broke.
- tamper: an event edited, deleted, reordered, a chain spliced from another store's run;
  each must be named by `verify_run` (and `refinegraph trace verify`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from refinegraph.bench.reliability_common import Section

CHAT_PATH = "/v1/chat/completions"


# -- a counting OpenAI-compatible endpoint --------------------------------------------------------


def role_of(messages: list[dict[str, Any]]) -> str:
    """Which self-refine role a request plays, from its system prompt (prompts/*.txt)."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if "strict reviewer" in system:
        return "critic"
    if "improve an answer" in system:
        return "refiner"
    return "solver"


def stub_reply(body: dict[str, Any]) -> str:
    """A deterministic self-refine exchange (a test double for a model server): a draft,
    a "revise" verdict, a refined answer, a "done" verdict; texts derived from the request."""
    messages = body["messages"]
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:10]
    role = role_of(messages)
    if role == "critic":
        done = "refined answer" in messages[-1]["content"]
        score = 9 if done else 4
        return json.dumps({"correctness": score, "completeness": score, "clarity": score, "score": score,
                           "verdict": "done" if done else "revise", "edits": ["be more precise"]})
    return f"refined answer {digest}" if role == "refiner" else f"draft answer {digest}"


class CountingServer:
    """An OpenAI-compatible endpoint on loopback that counts chat requests as they arrive
    and as their answers are sent: it answers them itself (`respond`, a deterministic stub)
    or forwards them to `upstream` (e.g. the embedded llama.cpp server).

    `hold_from(k)`: from the k-th request on, requests wait (unanswered) until `release()`,
    so a kill lands with a known set of calls in flight.
    """

    def __init__(self, respond: Callable[[dict[str, Any]], str] | None = None, *, upstream: str | None = None):
        if (respond is None) == (upstream is None):
            raise ValueError("give either respond (a stub) or upstream (a server to forward to)")
        self.respond, self.upstream = respond, upstream
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        """Chat request bodies, in arrival order."""
        self.answered_at: dict[int, float] = {}
        """Request index -> when its whole answer was written to the socket."""
        self.received_at: dict[int, float] = {}
        self.write_failures = 0
        self._hold_from: int | None = None
        self._released = threading.Event()
        self.holding = threading.Event()
        """Set when a request is being held."""
        self.held = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                owner._handle(self)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def start(self) -> CountingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CountingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold_from(self, k: int) -> None:
        """Hold every request from the k-th (1-based) on, until `release()`."""
        with self.lock:
            self._hold_from, self.held = k, 0
            self._released.clear()
            self.holding.clear()

    def release(self) -> None:
        with self.lock:
            self._hold_from = None
        self._released.set()

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def in_flight_at(self, moment: float) -> int:
        """Requests received before `moment` whose answer had not been sent by then."""
        with self.lock:
            return sum(1 for i, t in self.received_at.items() if t <= moment
                       and self.answered_at.get(i, float("inf")) > moment)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        data = handler.rfile.read(int(handler.headers["Content-Length"]))
        body = json.loads(data)
        with self.lock:
            index = len(self.received)
            self.received.append(body)
            self.received_at[index] = time.monotonic()
            hold = self._hold_from is not None and index + 1 >= self._hold_from
            if hold:
                self.held += 1
        if hold:
            self.holding.set()
            self._released.wait()
        status, reply = self._reply(body, data)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            handler.wfile.write(reply)
            handler.wfile.flush()
        except OSError:  # the client is gone (killed): the call was cut mid-flight
            with self.lock:
                self.write_failures += 1
            return
        with self.lock:
            self.answered_at[index] = time.monotonic()

    def _reply(self, body: dict[str, Any], data: bytes) -> tuple[int, bytes]:
        if self.upstream is not None:
            request = urllib.request.Request(self.upstream.rstrip("/") + CHAT_PATH, data=data,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - loopback
                return response.status, response.read()
        n = body.get("n", 1)
        text = self.respond(body)  # type: ignore[misc]
        reply = {"id": "stub", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                             for i in range(n)],
                 "usage": {"prompt_tokens": 20, "completion_tokens": 5 * n, "total_tokens": 20 + 5 * n}}
        return 200, json.dumps(reply).encode()


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


def _workdir(workdir: Path | None, name: str) -> Path:
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"rg-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
    folder = _workdir(workdir, "crash")
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
    folder = _workdir(workdir, "writers")
    store_path, checkpoints = folder / "traces.sqlite", folder / "checkpoints.sqlite"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with CountingServer(stub_reply) as server:
        workers = [context.Process(target=_writer_process, args=(
            str(store_path), str(checkpoints), server.url, w, graph_runs, raw_runs, events_per_run,
            str(folder / f"worker-{w}.json"), barrier)) for w in range(processes)]
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


# -- stores to damage -----------------------------------------------------------------------------------


def stub_config(server: CountingServer) -> Any:
    """Every role played by the model behind `server`."""
    from refinegraph.config import Config, ModelSpec

    return Config(models={"m": ModelSpec(backend="openai", base_url=server.url, model="stub-model")},
                  roles={"default": "m"})


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
    folder = _workdir(workdir, "truncation")
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
    folder = _workdir(workdir, "tamper")
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
        shutil.copyfile(whole, case)
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
