"""`refinegraph bench throughput`: runs per second at 32 concurrent runs of an instant model.

What a GPU server answering in milliseconds would leave of refinegraph: greedy and
Self-Refine on the instant model (benchmarks.instant, yielding to the event loop
once per call as a network call would), 32 runs at a time in one process, for bare
LangGraph, refinegraph without a trace, and refinegraph's default path (traced and
resumable) on SQLite and, where a DSN is given, on PostgreSQL. Configurations run in
interleaved rounds in one process; each figure is the median of its rounds' rates.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.instant import InstantModel
from benchmarks.overhead import invoke_bare
from refinegraph.bench.report import environment, md_table, median
from refinegraph.config import Config, TraceSettings
from refinegraph.models.base import Samples
from refinegraph.registry import get_graph
from refinegraph.runner import run

GRAPHS = {"greedy": "What is 6 times 7?", "self-refine": "What is 6 times 7? Explain in one sentence."}
GOAL_DEFAULT_VS_UNTRACED = 0.70


class YieldingModel(InstantModel):
    """The instant model, yielding to the event loop once per call (as any awaited I/O does),
    so concurrent runs interleave as they would on a real server."""

    async def sample(self, messages: list[dict[str, Any]], **kwargs: Any) -> Samples:
        await asyncio.sleep(0)
        return await super().sample(messages, **kwargs)


RunOnce = Callable[[int], Awaitable[Any]]


def _runners(graph: str, workdir: Path, postgres: str | None) -> dict[str, RunOnce]:
    model = YieldingModel("local")
    models = {"local": model}
    task = GRAPHS[graph]
    bare_graph = get_graph(graph).build({})
    untraced = Config()

    async def bare(i: int) -> Any:
        return await invoke_bare(bare_graph, {"task": task}, model)

    async def no_trace(i: int) -> Any:
        return await run(graph, task, config=untraced, models=models, trace=False)

    def default_on(location: str, schema: str = "refinegraph") -> RunOnce:
        config = Config(trace=TraceSettings(store=location, schema=schema))

        async def default(i: int) -> Any:
            return await run(graph, task, config=config, models=models)
        return default

    runners = {"bare LangGraph": bare, "refinegraph, no trace": no_trace,
               "refinegraph default path, SQLite": default_on(str(workdir / f"{graph}.sqlite"))}
    if postgres:
        runners["refinegraph default path, PostgreSQL"] = default_on(postgres, f"rg_bench_{int(time.time())}")
    return runners


async def _rate(run_once: RunOnce, runs: int, concurrency: int) -> float:
    """Runs per second of `runs` runs, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await run_once(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(runs)))
    return runs / (time.perf_counter() - started)


async def throughput(runs: int = 320, rounds: int = 3, concurrency: int = 32,
                     postgres: str | None = None) -> dict[str, Any]:
    """Measure every configuration of both graphs; the report holds rates, ratios and goals."""
    graphs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="refinegraph-throughput-") as tmp:
        for graph in GRAPHS:
            runners = _runners(graph, Path(tmp), postgres)
            for runner in runners.values():  # warm-up: compiled graphs, stores opened
                await _rate(runner, concurrency, concurrency)
            rates: dict[str, list[float]] = {name: [] for name in runners}
            names = list(runners)
            for r in range(rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    rates[name].append(await _rate(runners[name], runs, concurrency))
            medians = {name: median(values) for name, values in rates.items()}
            untraced = medians["refinegraph, no trace"]
            graphs[graph] = {name: {"runs_per_s": round(rate, 1), "round_rates": [round(x, 1) for x in rates[name]],
                                    "vs_no_trace": round(rate / untraced, 3)} for name, rate in medians.items()}
    sqlite_ratios = {g: rows["refinegraph default path, SQLite"]["vs_no_trace"] for g, rows in graphs.items()}
    return {"benchmark": "throughput", "runs_per_round": runs, "rounds": rounds, "concurrency": concurrency,
            "graphs": graphs,
            "goal": {"default_sqlite_vs_no_trace": sqlite_ratios, "goal": GOAL_DEFAULT_VS_UNTRACED,
                     "met": all(r >= GOAL_DEFAULT_VS_UNTRACED for r in sqlite_ratios.values())},
            "environment": environment()}


def goal_lines(report: dict[str, Any]) -> list[str]:
    goal = report["goal"]
    return [f"{graph}: default path on SQLite / no trace = {ratio:.2f}x (goal >= {goal['goal']:.2f}x) "
            f"{'met' if ratio >= goal['goal'] else 'MISSED'}"
            for graph, ratio in goal["default_sqlite_vs_no_trace"].items()]


def markdown(report: dict[str, Any]) -> str:
    rows = [[graph, name, f"{row['runs_per_s']:.1f}", f"{row['vs_no_trace']:.2f}x"]
            for graph, table in report["graphs"].items() for name, row in table.items()]
    env = report["environment"]
    return "\n\n".join([
        "# refinegraph bench throughput",
        (f"{report['concurrency']} concurrent runs on an instant model, {report['runs_per_round']} runs a round, "
         f"{report['rounds']} interleaved rounds; figure = median rate of the rounds."),
        md_table(["graph", "configuration", "runs/s", "vs no trace"], rows),
        "\n".join(f"- {line}" for line in goal_lines(report)),
        f"Python {env['python']}, {env['platform']}, {env['cpus']} CPUs, at {env['at']}.",
    ])
