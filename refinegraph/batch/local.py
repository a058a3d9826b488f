"""The local executor: many runs in one process with asyncio, bounded by a concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from refinegraph.batch.execute import run_input
from refinegraph.batch.inputs import BatchInput
from refinegraph.batch.outdir import BatchDir
from refinegraph.config import Config
from refinegraph.models import LocalModel, Model, build_model
from refinegraph.registry import get_graph
from refinegraph.trace.store import TraceStore


@contextlib.asynccontextmanager
async def shared_models(graph: str, params: dict[str, Any], config: Config,
                        supplied: dict[str, Model] | None) -> AsyncIterator[dict[str, Model]]:
    """One backend per model for the whole batch (one HTTP connection pool, not one per
    run), closed at its end; `supplied` ones (test doubles) are used as given."""
    spec = get_graph(graph)
    names = set(config.roles.values()) | set(spec.uses_models(params, config) if spec.uses_models else [])
    supplied = supplied or {}
    built = {name: build_model(name, config.spec(name)) for name in sorted(names) if name not in supplied}
    for model in built.values():
        if isinstance(model, LocalModel):
            model.address  # noqa: B018 - starts it now, not in several runs' first calls at once
    try:
        yield {**built, **supplied}
    finally:
        for model in built.values():
            await model.aclose()


async def run_local(items: list[BatchInput], bdir: BatchDir, *, graph: str, concurrency: int, config: Config,
                    params: dict[str, Any], budget_tokens: int | None, store: TraceStore,
                    checkpoint_path: Path | None, models: dict[str, Model] | None,
                    on_result: Callable[[dict[str, Any]], None]) -> None:
    """Run `items` with at most `concurrency` at once, into one trace store.

    Each input's run id is written to started.jsonl before its run starts and its line to
    results.jsonl as it ends. A crash (an exception that is not one input's failure)
    cancels the runs in flight, which stay resumable, and is raised.
    """
    queue = deque(items)
    started = bdir.started()

    async def worker() -> None:
        while queue:
            item = queue.popleft()
            run_id = started.get(item.id)
            if run_id is None:
                run_id = uuid.uuid4().hex
                bdir.record_start(item.id, run_id)
            row = await run_input(graph, item.id, item.input, run_id, store=store, checkpoint_path=checkpoint_path,
                                  config=config, params=params, budget_tokens=budget_tokens, models=models,
                                  restarted=lambda new_id, ident=item.id: bdir.record_start(ident, new_id))
            bdir.record_result(row)
            on_result(row)

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(items))))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
