"""`refinegraph bench reliability`, the server under load (the `server-load` part).

`refinegraph serve` as its own process on the embedded model (SmolLM2 on llama.cpp, in
that process), so the memory sampled from /proc is the server's alone; clients are the
official AsyncOpenAI client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.reliability_common import Section, run_count, verify_all
from refinegraph.procs import ProcessExited, free_port, process_tree_rss, stop, wait_http_ok
from refinegraph.trace.store import TraceStore

# -- load --------------------------------------------------------------------------------------------


LOAD_CONFIG = """\
[models.local]
backend = "local"
{threads}
[pipelines.greedy]
graph = "greedy"
params = {{max_tokens = {max_tokens}}}

[server]
host = "127.0.0.1"
port = {port}
"""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("refinegraph")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-c", "from refinegraph.cli.app import main; main()", "serve"]


async def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Return once `refinegraph serve` answers /healthz (polled in a thread: the loop stays free)."""
    try:
        await asyncio.to_thread(wait_http_ok, f"{base}/healthz", proc, timeout, interval=0.2)
    except ProcessExited as exc:
        raise RuntimeError(f"`refinegraph serve` exited with {exc.returncode}") from None
    except TimeoutError:
        raise RuntimeError("`refinegraph serve` did not answer /healthz in time") from None


@dataclass
class LoadRun:
    """What one load window measured (latencies as (start offset, seconds))."""

    samples: list[tuple[float, int]] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    tokens: int = 0
    elapsed: float = 0.0
    load_before: float = 0.0
    """The 1-minute load average as the window opened (other processes share the CPUs)."""
    exit_code: int | None = None
    server_log: str = ""
    runs: int = 0
    verified: int = 0
    failed: int = 0
    broken: list[str] = field(default_factory=list)


async def drive_load(work: Path, clients: int, seconds: float, *, max_tokens: int, threads: int | None,
                     sample_every_s: float, seed: int) -> LoadRun:
    """Start `refinegraph serve`, warm it up, load it for `seconds`, stop it, check its traces."""
    import openai

    port = free_port()
    config = work / "serve.toml"
    config.write_text(LOAD_CONFIG.format(max_tokens=max_tokens, port=port,
                                         threads=f"threads = {threads}\n" if threads else ""))
    home = work / "home"
    env = {**os.environ, "REFINEGRAPH_HOME": str(home)}
    out = LoadRun(elapsed=float(seconds))
    base = f"http://127.0.0.1:{port}"
    with open(work / "serve.log", "w") as log_file:
        proc = subprocess.Popen([*serve_command(), "--config", str(config), "--log-level", "warning"], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            await wait_healthy(base, proc)
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300,
                                        http_client=httpx.AsyncClient(limits=httpx.Limits(
                                            max_connections=clients + 4)))
            # the first request starts the embedded model; it is not part of the measured window
            await client.chat.completions.create(model="greedy", messages=[{"role": "user", "content": "Hi"}])
            out.load_before = os.getloadavg()[0]
            t0 = time.monotonic()
            deadline = t0 + seconds
            done = asyncio.Event()

            async def sampler() -> None:
                while not done.is_set():
                    out.samples.append((time.monotonic() - t0, process_tree_rss(proc.pid)))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), sample_every_s)

            async def worker(index: int) -> None:
                rng = random.Random(seed * 1000 + index)
                while time.monotonic() < deadline:
                    a, b = rng.randint(2, 99), rng.randint(2, 99)
                    sent = time.monotonic()
                    try:
                        reply = await client.chat.completions.create(
                            model="greedy", messages=[{"role": "user", "content": f"What is {a} + {b}?"}])
                    except openai.APIError as exc:
                        out.errors[type(exc).__name__] += 1
                        if len(out.error_examples) < 5:
                            out.error_examples.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                        continue
                    out.latencies.append((sent - t0, time.monotonic() - sent))
                    out.tokens += reply.usage.completion_tokens if reply.usage else 0

            sampling = asyncio.ensure_future(sampler())
            await asyncio.gather(*[worker(i) for i in range(clients)])
            out.elapsed = time.monotonic() - t0  # past `seconds` by the requests in flight at the deadline
            done.set()
            await sampling
            await client.close()
        finally:
            out.exit_code = stop(proc, signal.SIGINT)  # SIGINT: the server's own graceful shutdown
    out.server_log = (work / "serve.log").read_text(errors="replace")
    store = TraceStore(home / "traces.sqlite")
    try:
        out.runs = run_count(store)
        out.verified, out.failed, out.broken = verify_all(store)
    finally:
        store.close()
    return out


async def load_section(clients: int = 16, seconds: float = 120, *, max_tokens: int = 24, threads: int | None = 1,
                       warmup_s: float | None = None, sample_every_s: float = 0.5, seed: int = 0,
                       workdir: Path | None = None) -> Section:
    """`clients` AsyncOpenAI clients against `refinegraph serve` (a subprocess) for `seconds`.

    Each client sends greedy completions (max_tokens small) back to back. Figures: requests
    completed, errors, p50/p99 latency, the server's RSS over time and its growth from just
    after warm-up (the first `warmup_s`, default 15% of the window) to the end (medians of the
    first and last tenth after warm-up). Expected: no error, growth within 10%, one verified
    trace per completed request. `threads` is llama.cpp's (None: its default, one per core);
    1 by default, since on a shared machine its spinning threads measure the neighbours'
    load more than the server."""
    started = time.perf_counter()
    section = Section(name="server load", ok=True)
    warmup = seconds * 0.15 if warmup_s is None else warmup_s
    owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="rg-load-")) if owned else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        measured = await drive_load(work, clients, seconds, max_tokens=max_tokens, threads=threads,
                                    sample_every_s=sample_every_s, seed=seed)
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    samples, latencies, errors = measured.samples, measured.latencies, measured.errors
    elapsed, runs, verified, failed = measured.elapsed, measured.runs, measured.verified, measured.failed
    window = [(t, rss) for t, rss in samples if t >= warmup]
    tenth = max(1, len(window) // 10)
    baseline = statistics.median(r for _, r in window[:tenth]) if window else 0
    final = statistics.median(r for _, r in window[-tenth:]) if window else 0
    growth = (final - baseline) / baseline if baseline else 0.0
    completed = len(latencies)
    failed_requests = sum(errors.values())
    total = completed + failed_requests
    lat = [d for _, d in latencies]
    mib = 1 << 20
    section.runs, section.traces_verified, section.traces_failed = runs, verified, failed
    section.seconds = round(time.perf_counter() - started, 2)
    section.figures = {
        "clients": clients, "seconds": seconds, "max_tokens": max_tokens, "llama_threads": threads,
        "warmup_s": round(warmup, 1),
        "requests_completed": completed, "errors": failed_requests, "errors_by_type": dict(errors),
        "error_rate": round(failed_requests / total, 4) if total else 0.0,
        "elapsed_s": round(elapsed, 1), "requests_per_s": round(completed / elapsed, 2),
        "completion_tokens": measured.tokens,
        "latency_p50_s": round(percentile(lat, 0.5), 3), "latency_p99_s": round(percentile(lat, 0.99), 3),
        "latency_max_s": round(max(lat, default=0.0), 3),
        "rss_mib_start": round(baseline / mib, 1), "rss_mib_end": round(final / mib, 1),
        "rss_mib_max": round(max((r for _, r in samples), default=0) / mib, 1),
        "rss_growth_after_warmup": round(growth, 4),
        "rss_samples": [[round(t, 1), round(r / mib, 1)] for t, r in samples[::max(1, len(samples) // 60)]],
        "runs_recorded": runs, "server_exit_code": measured.exit_code, "cpu_count": os.cpu_count(),
        "load_average_1m_start": round(measured.load_before, 2), "load_average_1m_end": round(os.getloadavg()[0], 2),
    }
    section.lines = [
        f"{clients} clients for {seconds:.0f} s on the embedded model (greedy, max_tokens {max_tokens}, "
        f"llama.cpp threads {threads or 'default'}): "
        f"{completed} requests completed in {elapsed:.0f} s ({completed / elapsed:.2f}/s), {failed_requests} errors",
        f"latency p50 {percentile(lat, 0.5):.2f} s, p99 {percentile(lat, 0.99):.2f} s",
        f"server RSS {baseline / mib:.0f} MiB after {warmup:.0f} s warm-up -> {final / mib:.0f} MiB at the end "
        f"({growth:+.1%}); max {section.figures['rss_mib_max']} MiB",
        f"runs recorded {runs}, traces verified {verified} (failed {failed}); "
        f"{os.cpu_count()} CPUs, load average {measured.load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end",
    ]
    expect = section.expect
    expect(completed > 0, "no request completed")
    expect(failed_requests == 0, f"{failed_requests} requests failed: {measured.error_examples[:3]}")
    expect(growth <= 0.10, f"server RSS grew {growth:.1%} after warm-up (goal: within 10%)")
    expect(runs == completed + 1, f"{runs} runs recorded for {completed} completed requests and the warm-up one")
    expect(failed == 0, f"traces that do not verify: {measured.broken[:3]}")
    expect("Traceback" not in measured.server_log, f"the server logged a traceback: {measured.server_log[-500:]}")
    return section
