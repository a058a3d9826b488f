"""`refinegraph bench overhead`: what refinegraph costs on top of bare LangGraph.

The same Self-Refine node functions run on an instant in-process model (see
`benchmarks.instant`), so a run's time is the framework's alone. Configurations
run side by side in one process, interleaved in rounds (the order rotates each round) to
spread machine noise; each one's figure is the median of its per-run times.

The default path is what `refinegraph.run(graph, task)` does with nothing else said: the
store opened and closed per run, traces on, and the run resumable (from its trace). The
LangGraph SQLite checkpointer, which only graphs pausing for a human turn on, is shown for
comparison.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.instant import EXPECTED_ANSWER, InstantModel
from refinegraph.bench.report import environment, md_table, median
from refinegraph.config import Config, TraceSettings
from refinegraph.graphs.self_refine import build_self_refine
from refinegraph.models.base import Model, Samples
from refinegraph.nodes import node_events
from refinegraph.runner import RECURSION_LIMIT, run
from refinegraph.trace.store import TraceStore

TASK = "What is 6 times 7? Explain in one sentence."
GOAL_VS_BARE = 1.15
GOAL_DEFAULT_VS_BARE = 1.30

RunOnce = Callable[[], Awaitable[str | None]]


class BareContext:
    """What a plain LangGraph user would hand the nodes: calls go straight to the model,
    with no budget, cache, retries or trace (see `invoke_bare`)."""

    conversation = None
    """The input is one task, never a chat (see RunContext.conversation)."""
    tools = None
    """No tools are offered (see RunContext.tools)."""

    def __init__(self, model: Model):
        self.model = model

    async def sample(self, role: str, messages: list[dict[str, Any]], *, min_tokens: int = 0,
                     **kwargs: Any) -> Samples:
        if kwargs.get("tools") is None:
            kwargs.pop("tools", None)  # none offered: the model is asked as before tools existed
        return await self.model.sample(messages, **kwargs)

    def emit(self, event: Any) -> Any:
        return event

    def fallback(self, kind: str, reason: str, detail: str = "") -> None:
        return None

    def supports_json_schema(self, role: str) -> bool:
        return self.model.supports_json_schema

    def model_name(self, role: str) -> str:
        return self.model.name


async def invoke_bare(graph: Any, state: dict[str, Any], model: Model) -> dict[str, Any]:
    """`graph` run by LangGraph alone: the same compiled graph and node functions, handed a
    BareContext, with refinegraph's node wrapper switched off (`node_events`), so no node
    event is built and the nodes run as plain functions. What stays of refinegraph is inside
    the node functions themselves (their budget guard, the events they build, dropped here)."""
    token = node_events.set(False)
    try:
        return await graph.ainvoke(state, config={"recursion_limit": RECURSION_LIMIT}, context=BareContext(model))
    finally:
        node_events.reset(token)


@dataclass
class Configuration:
    key: str
    label: str
    run_once: RunOnce
    informative: bool = False


def configurations(workdir: Path, model: InstantModel) -> tuple[list[Configuration], TraceStore]:
    """The ways of running the same graph, sharing one instant model."""
    bare_graph = build_self_refine({})
    store = TraceStore(workdir / "traces.sqlite")
    models = {"local": model}
    default_location = str(workdir / "default.sqlite")
    checkpoints = workdir / "checkpoints.sqlite"
    config = Config()
    default_config = Config(trace=TraceSettings(store=default_location))

    async def bare() -> str | None:
        return (await invoke_bare(bare_graph, {"task": TASK}, model)).get("answer")

    async def traces_off() -> str | None:
        return (await run("self-refine", TASK, config=config, models=models, trace=False)).answer

    async def traces_on() -> str | None:
        return (await run("self-refine", TASK, config=config, models=models, store=store)).answer

    async def default_path() -> str | None:
        return (await run("self-refine", TASK, config=default_config, models=models)).answer

    async def traces_checkpoint() -> str | None:
        return (await run("self-refine", TASK, config=config, models=models, store=store,
                          checkpoint=True, checkpoint_path=checkpoints)).answer

    return [
        Configuration("bare", "bare LangGraph", bare),
        Configuration("traces_off", "refinegraph, traces off", traces_off),
        Configuration("traces_on", "refinegraph, traces on (one store)", traces_on),
        Configuration("default", "refinegraph default path (run() with no store: traced, resumable)", default_path),
        Configuration("traces_checkpoint", "refinegraph, traces + LangGraph SQLite checkpointer", traces_checkpoint,
                      informative=True),
    ], store


async def measure(configs: list[Configuration], runs: int, rounds: int,
                  warmup: int = 5) -> dict[str, list[list[float]]]:
    """Per-run seconds of each configuration, one list per round."""
    for config in configs:
        for _ in range(warmup):
            answer = await config.run_once()
            if answer != EXPECTED_ANSWER:
                raise RuntimeError(f"{config.key}: the run answered {answer!r}, expected {EXPECTED_ANSWER!r}")
    per_round = max(1, runs // rounds)
    times: dict[str, list[list[float]]] = {c.key: [] for c in configs}
    for r in range(rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for config in order:
            gc.collect()
            block = []
            for _ in range(per_round):
                started = time.perf_counter()
                await config.run_once()
                block.append(time.perf_counter() - started)
            times[config.key].append(block)
    return times


def trace_shape(store: TraceStore) -> tuple[int, int]:
    """(events, llm_call events) of the latest traced run: what tracing on pays for."""
    latest = store.runs(limit=1)
    if not latest:
        return 0, 0
    return int(latest[0]["events"]), len(store.events(latest[0]["run_id"], types={"llm_call"}))


def summarize(configs: list[Configuration], times: dict[str, list[list[float]]],
              store: TraceStore, runs: int, rounds: int) -> dict[str, Any]:
    """Medians, per-round medians, ratios and goal checks: everything the report holds."""
    medians = {k: median([t for block in blocks for t in block]) for k, blocks in times.items()}
    bare, off, on, default = medians["bare"], medians["traces_off"], medians["traces_on"], medians["default"]
    vs_bare, default_vs_bare = on / bare, default / bare
    events, calls = trace_shape(store)
    return {
        "benchmark": "overhead", "graph": "self-refine", "task": TASK,
        "runs_per_configuration": sum(len(block) for block in times["bare"]),
        "runs_requested": runs, "rounds": rounds,
        "model_calls_per_run": calls, "events_per_traced_run": events,
        "configurations": [
            {"key": c.key, "label": c.label, "informative": c.informative,
             "median_ms": round(medians[c.key] * 1000, 3),
             "round_medians_ms": [round(median(b) * 1000, 3) for b in times[c.key]],
             "min_ms": round(min(t for b in times[c.key] for t in b) * 1000, 3),
             "ratio_vs_bare": round(medians[c.key] / bare, 4)}
            for c in configs
        ],
        "tracing_cost": {"ms_per_run": round((on - off) * 1000, 3),
                         "us_per_event": round((on - off) * 1e6 / max(1, events), 2),
                         "untraced_ms_over_bare": round((off - bare) * 1000, 3)},
        "goals": {
            "traces_vs_bare": {"ratio": round(vs_bare, 4), "goal": GOAL_VS_BARE, "met": vs_bare <= GOAL_VS_BARE},
            "default_vs_bare": {"ratio": round(default_vs_bare, 4), "goal": GOAL_DEFAULT_VS_BARE,
                                "met": default_vs_bare <= GOAL_DEFAULT_VS_BARE},
        },
        "environment": environment(),
    }


def goal_lines(report: dict[str, Any]) -> list[str]:
    """The two goal lines, then what tracing costs per run and per event."""
    g = report["goals"]
    a, b = g["traces_vs_bare"], g["default_vs_bare"]
    cost = report["tracing_cost"]
    return [
        (f"refinegraph with traces / bare LangGraph = {a['ratio']:.2f}x (goal <= {a['goal']:.2f}x)"
         f" {'met' if a['met'] else 'MISSED'}"),
        (f"default path (traced, resumable) / bare LangGraph = {b['ratio']:.2f}x "
         f"(goal <= {b['goal']:.2f}x) {'met' if b['met'] else 'MISSED'}"),
        (f"tracing costs {cost['ms_per_run']:.3f} ms a run = {cost['us_per_event']:.1f} us per event "
         f"({report['events_per_traced_run']} events); refinegraph without traces costs "
         f"{cost['untraced_ms_over_bare']:.3f} ms a run over bare LangGraph"),
    ]


def markdown(report: dict[str, Any]) -> str:
    """report.md: the printed table and lines, with the machine they were measured on."""
    rows = [[c["label"] + (" (informative)" if c["informative"] else ""), f"{c['median_ms']:.3f}",
             " / ".join(f"{m:.2f}" for m in c["round_medians_ms"]), f"{c['ratio_vs_bare']:.2f}x"]
            for c in report["configurations"]]
    env = report["environment"]
    return "\n\n".join([
        "# refinegraph bench overhead",
        (f"Self-Refine on an instant in-process model ({report['model_calls_per_run']} model calls a run, "
         f"{report['events_per_traced_run']} trace events a traced run); "
         f"{report['runs_per_configuration']} runs per configuration in {report['rounds']} interleaved rounds; "
         "figure = median per-run time."),
        md_table(["configuration", "median ms/run", "round medians (ms)", "vs bare"], rows),
        "\n".join(f"- {line}" for line in goal_lines(report)),
        (f"Python {env['python']}, {env['platform']}, {env['cpus']} CPUs, "
         f"langgraph {env['versions'].get('langgraph')}, at {env['at']}."),
    ])


async def overhead(runs: int = 300, rounds: int = 5) -> dict[str, Any]:
    """Run the benchmark in a temporary folder and return its report."""
    with tempfile.TemporaryDirectory(prefix="refinegraph-bench-") as tmp:
        model = InstantModel("local")
        configs, store = configurations(Path(tmp), model)
        try:
            times = await measure(configs, runs, rounds)
            return summarize(configs, times, store, runs, rounds)
        finally:
            store.close()
