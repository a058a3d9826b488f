"""Batch runs: one graph over many inputs, resumable, on asyncio or on Ray.

    summary = await run_batch("inputs.jsonl", graph="self-consistency", concurrency=8, out="out/")

The out dir gets results.jsonl (one line per input as its run ends) and the state that
makes a re-run with the same `out` resume the batch: finished inputs are skipped,
interrupted (or failed, with `retry_errors`) runs are resumed from their checkpoints,
so no finished model call is paid again. See refinegraph.batch.outdir for the files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from refinegraph.batch.execute import ERROR, FINISHED
from refinegraph.batch.inputs import BatchInput, BatchInputError, parse_inputs, read_inputs
from refinegraph.batch.outdir import BatchDir, BatchDirError, read_jsonl
from refinegraph.batch.ray_executor import RayUnavailable
from refinegraph.config import Config, ConfigError, load_config
from refinegraph.models import Model
from refinegraph.registry import get_graph
from refinegraph.runner import compiled_graph, default_store
from refinegraph.trace.store import TraceStore

Executor = Literal["local", "ray"]


class BatchSummary(BaseModel):
    """What a batch invocation did (printed at its end)."""

    graph: str
    executor: str
    inputs: int
    skipped: int
    """Inputs already finished by an earlier invocation on the same out dir."""
    ran: int
    resumed: int
    finished: int
    errors: int
    tokens: int
    completion_tokens: int
    calls: int
    elapsed_s: float
    completion_tokens_per_s: float
    out_dir: str
    store: str
    merge: str | None = None


def _items(inputs: str | Path | Iterable[Any], input_key: str) -> list[BatchInput]:
    if isinstance(inputs, str | Path):
        return read_inputs(inputs, input_key)
    values = list(inputs)
    if all(isinstance(v, BatchInput) for v in values):
        return values
    return parse_inputs(values, input_key)


async def run_batch(inputs: str | Path | Iterable[Any], *, graph: str, executor: Executor = "local",
                    concurrency: int = 4, config: Config | str | Path | None = None,
                    params: dict[str, Any] | None = None, budget_tokens: int | None = None,
                    out: str | Path = "batch-out", models: dict[str, Model] | None = None,
                    store: TraceStore | None = None, checkpoint_path: Path | None = None,
                    retry_errors: bool = True, on_result: Callable[[dict[str, Any]], None] | None = None,
                    ray_address: str | None = None, worker_cpus: float | None = None) -> BatchSummary:
    """Run `graph` on every input (a JSONL path, or strings/objects); resumable through `out`.

    `models` overrides backends by name (a test double; local executor only). The local
    executor writes to `store` (default: $REFINEGRAPH_HOME's); the Ray executor writes
    per-worker shards under `out`/shards and merges them into `store` at the end.
    """
    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor {executor!r}: use local or ray")
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    if executor == "ray" and models:
        raise ConfigError("the ray executor runs in other processes: give it models through the config")
    spec = get_graph(graph)
    params = params or {}
    compiled_graph(graph, params)  # bad params fail before anything is recorded
    config = config if isinstance(config, Config) else load_config(config)
    items = _items(inputs, spec.input_key)
    store = store or default_store(config)
    started_at = time.perf_counter()
    done: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        done.append(row)
        if on_result is not None:
            on_result(row)

    merge = None
    with BatchDir(out) as bdir:
        bdir.check_manifest({"graph": graph, "params": params, "executor": executor, "budget_tokens": budget_tokens})
        previous = bdir.results()
        keep = {FINISHED} if retry_errors else {FINISHED, ERROR}
        pending = [item for item in items if previous.get(item.id, {}).get("status") not in keep]
        if executor == "local":
            from refinegraph.batch.local import run_local, shared_models

            async with shared_models(graph, params, config, models) as backends:
                await run_local(pending, bdir, graph=graph, concurrency=concurrency, config=config, params=params,
                                budget_tokens=budget_tokens, store=store, checkpoint_path=checkpoint_path,
                                models=backends, on_result=record)
        else:
            from refinegraph.batch.ray_executor import run_ray

            report = await asyncio.to_thread(
                run_ray, pending, bdir, graph=graph, concurrency=concurrency, config=config, params=params,
                budget_tokens=budget_tokens, target=store, on_result=record, ray_address=ray_address,
                worker_cpus=worker_cpus)
            merge = report.summary()
    elapsed = time.perf_counter() - started_at
    completion = sum(r["completion_tokens"] for r in done)
    return BatchSummary(
        graph=graph, executor=executor, inputs=len(items), skipped=len(items) - len(pending), ran=len(done),
        resumed=sum(1 for r in done if r["resumed"]), finished=sum(1 for r in done if r["status"] == FINISHED),
        errors=sum(1 for r in done if r["status"] == ERROR), tokens=sum(r["tokens"] for r in done),
        completion_tokens=completion, calls=sum(r["calls"] for r in done), elapsed_s=round(elapsed, 3),
        completion_tokens_per_s=round(completion / elapsed, 2) if elapsed > 0 else 0.0, out_dir=str(out),
        store=str(store.path), merge=merge)


__all__ = ["BatchDirError", "BatchInput", "BatchInputError", "BatchSummary", "RayUnavailable", "read_jsonl",
           "run_batch"]
