"""`refinegraph bench proxy`: what the drop-in proxy adds to a request.

The same chat request goes straight to an upstream server and through `refinegraph serve`
as `greedy:UPSTREAM` (a traced run, one model call), at each concurrency, in interleaved
rounds. The upstream is the embedded llama.cpp server (`--upstream embedded`, the issue's
setting: SmolLM2 answering 16 tokens at temperature 0, what an app would proxy), or the
scripted stub (`--upstream stub`: an instant deterministic reply, so the proxy's own cost
is all that is measured, an upper bound of it in relative terms). Figures: the added
latency at p50 and p99 (proxied minus direct, per percentile) and the throughput ratio
(proxied requests/s over direct). Goals (issue 13): at most 5 ms added at p50 and at least
0.95x the direct throughput.

The proxy is `refinegraph serve` in a process of its own, as deployed; the stub is one too,
and the client is this process. (An earlier version ran the server and the stub as threads
of the client's process: every hand-off then waited for the interpreter lock, up to its 5 ms
switch interval, which the figures charged to the proxy.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from refinegraph.bench.report import environment, md_table
from refinegraph.procs import process_cpu_seconds

GOAL_ADDED_P50_MS = 5.0
GOAL_THROUGHPUT_RATIO = 0.95
CHAT = [{"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 5 + 7?"}]
"""With a system message of its own, the conversation reaches the upstream as sent (the
solver adds its prompt only to a chat without one): both paths ask the same of the model."""


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation (statistics.quantiles' inclusive method)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


async def _batch(client: httpx.AsyncClient, url: str, body: dict[str, Any], requests: int, concurrency: int
                 ) -> tuple[list[float], float, list[int]]:
    """Latencies (ms) of `requests` requests, `concurrency` at a time, the wall time (s) and
    each reply's completion tokens (the same work upstream on both paths, checked)."""
    latencies: list[float] = []
    completions: list[int] = []
    left = iter(range(requests))

    async def worker() -> None:
        for _ in left:
            started = time.perf_counter()
            response = await client.post(url, json={"messages": CHAT, **body})
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            completions.append(response.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, completions


@contextlib.contextmanager
def _upstream(kind: str, model: str) -> Iterator[str]:
    """The upstream's /v1 URL: the embedded llama.cpp server for `model`, or the stub (a
    process of its own, serving until its standard input closes)."""
    if kind == "stub":
        stub = subprocess.Popen([sys.executable, "-m", "benchmarks.stub_server"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            yield stub.stdout.readline().strip()  # type: ignore[union-attr]
        finally:
            stub.stdin.close()  # type: ignore[union-attr]
            stub.wait(10)
        return
    from refinegraph.models.local import ensure_server, stop_server

    address, _ = ensure_server(model=model)
    try:
        yield f"{address}/v1"
    finally:
        stop_server()


@contextlib.contextmanager
def _proxy(upstream_url: str, home: Path) -> Iterator[tuple[str, int]]:
    """`refinegraph serve` in its own process, its `[proxy]` the upstream; its /v1 URL once it
    answers, and its pid."""
    from refinegraph.procs import ProcessExited, free_port, stop, wait_http_ok

    (home / "config.toml").write_text(f'[proxy]\nbase_url = "{upstream_url}"\n', encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with (home / "serve.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-c", "from refinegraph.cli.app import main; main()", "serve",
                                   "--port", str(port), "--log-level", "warning"],
                                  env={**os.environ, "REFINEGRAPH_HOME": str(home)}, stdout=log, stderr=log)
        try:
            try:
                wait_http_ok(f"{url}/models", server, 60, interval=0.1)
            except (ProcessExited, TimeoutError) as exc:
                raise RuntimeError(f"refinegraph serve did not start ({exc}): "
                                   f"{(home / 'serve.log').read_text()[-2000:]}") from exc
            yield url, server.pid
        finally:
            stop(server)


async def measure(requests: int, rounds: int, concurrencies: list[int], *, upstream: str = "embedded",
                  model: str = "smollm2-135m") -> dict[str, Any]:
    """Direct vs proxied, each concurrency, interleaved rounds (see the module docstring)."""
    per_round = max(1, requests // rounds)
    with tempfile.TemporaryDirectory() as home, _upstream(upstream, model) as upstream_url, \
            _proxy(upstream_url, Path(home)) as (proxy_url, proxy_pid):
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            # The same generation both ways: greedy decoding (the greedy graph's own),
            # 16 tokens (OpenAI's max_tokens caps every call of a proxied run).
            targets = {"direct": (f"{upstream_url}/chat/completions",
                                  {"model": "upstream-model", "max_tokens": 16, "temperature": 0}),
                       "proxied": (f"{proxy_url}/chat/completions",
                                   {"model": "greedy:upstream-model", "max_tokens": 16})}
            for url, body in targets.values():  # warm up: connections, the compiled graph
                await _batch(client, url, body, 4, 2)
            rows = []
            for concurrency in concurrencies:
                seen: dict[str, dict[str, Any]] = {k: {"latencies": [], "wall_s": 0.0, "completion_tokens": []}
                                                   for k in targets}
                proxy_cpu: float | None = 0.0
                for _ in range(rounds):
                    for kind, (url, body) in targets.items():
                        cpu_before = process_cpu_seconds(proxy_pid)
                        latencies, wall, completions = await _batch(client, url, body, per_round, concurrency)
                        cpu_after = process_cpu_seconds(proxy_pid)
                        if kind == "proxied" and proxy_cpu is not None:
                            proxy_cpu = None if cpu_before is None or cpu_after is None else (
                                proxy_cpu + cpu_after - cpu_before)
                        seen[kind]["latencies"] += latencies
                        seen[kind]["wall_s"] += wall
                        seen[kind]["completion_tokens"] += completions
                row = _row(concurrency, seen)
                # what the proxy itself costs a request, in CPU time: the floor of its added
                # latency on free cores, and a figure a busy machine does not inflate
                row["proxy_cpu_ms_per_request"] = (None if proxy_cpu is None
                                                   else round(1000 * proxy_cpu / len(seen["proxied"]["latencies"]), 2))
                rows.append(row)
    return {"requests_per_configuration": per_round * rounds, "rounds": rounds, "rows": rows,
            "upstream": "the scripted stub" if upstream == "stub" else f"the embedded llama.cpp server ({model})",
            "layout": "refinegraph serve in a process of its own; " + (
                "the stub in another" if upstream == "stub"
                else "llama.cpp in the client's process (its threads run outside the interpreter lock)"),
            "goals": {"added_p50_ms": GOAL_ADDED_P50_MS, "throughput_ratio": GOAL_THROUGHPUT_RATIO},
            "environment": environment()}


def _row(concurrency: int, seen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    figures = {}
    for kind, data in seen.items():
        lat = data["latencies"]
        figures[kind] = {"p50_ms": round(percentile(lat, 50), 3), "p99_ms": round(percentile(lat, 99), 3),
                         "requests_per_s": round(len(lat) / data["wall_s"], 2) if data["wall_s"] else None,
                         "mean_completion_tokens": round(statistics.fmean(data["completion_tokens"]), 2)}
    direct, proxied = figures["direct"], figures["proxied"]
    ratio = proxied["requests_per_s"] / direct["requests_per_s"] if direct["requests_per_s"] else None
    added_p50 = proxied["p50_ms"] - direct["p50_ms"]
    return {"concurrency": concurrency, **figures,
            "added_p50_ms": round(added_p50, 3), "added_p99_ms": round(proxied["p99_ms"] - direct["p99_ms"], 3),
            "throughput_ratio": round(ratio, 3) if ratio is not None else None,
            "met": added_p50 <= GOAL_ADDED_P50_MS and ratio is not None and ratio >= GOAL_THROUGHPUT_RATIO}


def goal_lines(report: dict[str, Any]) -> list[str]:
    return [(f"concurrency {r['concurrency']}: +{r['added_p50_ms']:.2f} ms at p50 (goal <= {GOAL_ADDED_P50_MS:g}), "
             f"+{r['added_p99_ms']:.2f} ms at p99, throughput {r['throughput_ratio']:.2f}x direct "
             f"(goal >= {GOAL_THROUGHPUT_RATIO:g}x) {'met' if r['met'] else 'MISSED'}; the proxy's CPU "
             f"{r.get('proxy_cpu_ms_per_request')} ms a request") for r in report["rows"]]


def markdown(report: dict[str, Any]) -> str:
    rows = [[r["concurrency"], r["direct"]["p50_ms"], r["proxied"]["p50_ms"], r["added_p50_ms"], r["added_p99_ms"],
             r["direct"]["requests_per_s"], r["proxied"]["requests_per_s"], r["throughput_ratio"],
             r["direct"]["mean_completion_tokens"], r["proxied"]["mean_completion_tokens"],
             r.get("proxy_cpu_ms_per_request")]
            for r in report["rows"]]
    env = report["environment"]
    return "\n\n".join([
        "# refinegraph bench proxy",
        (f"`greedy:UPSTREAM` through `refinegraph serve` vs the same request sent to the upstream "
         f"({report['upstream']}); {report['requests_per_configuration']} requests per configuration in "
         f"{report['rounds']} interleaved rounds; {report['layout']}."),
        md_table(["concurrency", "direct p50 ms", "proxied p50 ms", "added p50 ms", "added p99 ms",
                  "direct req/s", "proxied req/s", "ratio", "direct tokens/reply", "proxied tokens/reply",
                  "proxy CPU ms/request"], rows),
        "\n".join(f"- {line}" for line in goal_lines(report)),
        f"Python {env['python']}, {env['platform']}, {env['cpus']} CPUs, {env['at']}.",
    ])
