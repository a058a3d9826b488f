"""`refinegraph batch`: one graph over a JSONL file of inputs."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from refinegraph.cli.common import err, fail, open_store, out, print_json, run_until_signal


def _progress(total: int):
    count = {"n": 0}

    def show(row: dict[str, Any]) -> None:
        count["n"] += 1
        mark = "[green]ok[/]" if row["status"] == "finished" else "[red]error[/]"
        detail = escape(str(row["answer"])[:60]) if row["status"] == "finished" else escape(str(row["error"])[:200])
        again = " (resumed)" if row.get("resumed") else ""
        err.print(f"[{count['n']}/{total}] {escape(row['id'])} {mark}{again} {row['stop_reason']} "
                  f"tokens={row['tokens']} calls={row['calls']}  {detail}", highlight=False)

    return show


def batch(
    inputs: Path = typer.Argument(..., help="JSONL: one JSON string (the task) or object (with the graph's input "
                                              "key and an optional id) per line."),
    graph: str = typer.Option(..., "--graph", help="A registered graph (see `refinegraph graphs`)."),
    executor: str = typer.Option("local", "--executor", help="local (asyncio, one process) or ray."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Runs at once (Ray: the actor pool's size)."),
    config: Path | None = typer.Option(None, "--config", help="TOML config (default $REFINEGRAPH_HOME/config.toml)."),
    model: str | None = typer.Option(None, "--model", help="Play every role with this configured model."),
    param: list[str] = typer.Option([], "--param", "-p", help="Graph parameter KEY=VALUE (JSON value)."),
    budget_tokens: int | None = typer.Option(None, "--budget-tokens", min=1, help="Token budget of each run."),
    out_dir: Path | None = typer.Option(None, "--out", help="Results and resume state (default: <inputs>.batch/). "
                                                             "Run again with the same --out to resume."),
    retry_errors: bool = typer.Option(True, "--retry-errors/--keep-errors",
                                      help="On a re-run, resume inputs whose run failed (default) or keep them."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to join (default: start one)."),
    worker_cpus: float | None = typer.Option(None, "--worker-cpus", min=0.01,
                                             help="Ray: CPUs reserved per worker (default: an even share)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Run GRAPH on every input of INPUTS; results.jsonl fills as runs end, a summary is printed.

    Exit codes: 0 every input finished, 1 some input failed (see results.jsonl; run again
    to retry), 2 the request was wrong (graph, params, config, inputs, out dir in use).
    """

    from refinegraph.batch import BatchDirError, BatchInputError, RayUnavailable, run_batch
    from refinegraph.batch.inputs import read_inputs
    from refinegraph.cli.running import prepare as _prepare
    from refinegraph.models import ModelUnavailable
    from refinegraph.registry import UnknownGraph, get_graph
    from refinegraph.trace.store import TraceStoreError

    if executor not in ("local", "ray"):
        fail(f"--executor must be local or ray, not {executor!r}")
    out_dir = out_dir or inputs.with_name(inputs.stem + ".batch")
    try:
        cfg, params = _prepare(graph, config, model, param)
        if not inputs.is_file():
            raise BatchInputError(f"inputs file not found: {inputs}")
        total = len(read_inputs(inputs, get_graph(graph).input_key))
    except (UnknownGraph, ValueError) as exc:
        fail(str(exc))
    store = open_store(cfg)
    again = shlex.join(["refinegraph", "batch", str(inputs), "--graph", graph, "--out", str(out_dir)])
    try:
        summary = run_until_signal(
            run_batch(inputs, graph=graph, executor=executor, concurrency=concurrency,  # type: ignore[arg-type]
                      config=cfg, params=params, budget_tokens=budget_tokens, out=out_dir,
                      store=store, retry_errors=retry_errors, on_result=_progress(total),
                      ray_address=ray_address, worker_cpus=worker_cpus),
            [], as_json, [f"{again}  (the same command: runs done are kept, interrupted ones resumed)"])
    except (BatchInputError, BatchDirError, ValueError) as exc:
        fail(str(exc))
    except (RayUnavailable, ModelUnavailable, TraceStoreError) as exc:
        fail(str(exc), 1)
    if as_json:
        print_json(summary.model_dump())
    else:
        out.print(f"{summary.inputs} inputs: {summary.finished} finished, {summary.errors} failed, "
                  f"{summary.skipped} already done ({summary.resumed} resumed)", highlight=False)
        out.print(f"tokens {summary.tokens} (completion {summary.completion_tokens}), calls {summary.calls}, "
                  f"{summary.elapsed_s:.1f}s, {summary.completion_tokens_per_s:.1f} completion tok/s", highlight=False)
        if summary.merge:
            out.print(f"trace shards merged into {summary.store}: {summary.merge}", highlight=False)
        out.print(f"results: {out_dir / 'results.jsonl'}", highlight=False)
    if summary.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """`refinegraph batch` on the main app (`bench batch` is a harness: benchmarks/cli.py)."""
    app.command("batch")(batch)
