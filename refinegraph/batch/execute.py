"""One input of a batch, run or resumed: the same code for the local and the Ray executor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refinegraph.budget import Budget
from refinegraph.config import Config, ConfigError
from refinegraph.models import Model, ModelUnavailable
from refinegraph.runner import RunFailed, RunNotResumable, RunResult, TraceUnusable, resume, run
from refinegraph.trace.store import TraceStore

FINISHED = "finished"
ERROR = "error"


def result_row(ident: str, result: RunResult, *, resumed: bool, elapsed_s: float) -> dict[str, Any]:
    """The results.jsonl line of a run that ended (answered, stopped by its budget, or failed)."""
    return {"id": ident, "status": ERROR if result.error else FINISHED, "answer": result.answer,
            "stop_reason": result.stop_reason, "run_id": result.run_id, "tokens": result.usage["total_tokens"],
            "completion_tokens": result.usage["completion_tokens"], "calls": result.model_calls,
            "cache_hits": result.cache_hits, "error": result.error, "resumed": resumed,
            "elapsed_s": round(elapsed_s, 3)}


def error_row(ident: str, run_id: str | None, error: BaseException, elapsed_s: float) -> dict[str, Any]:
    """The line of an input whose run could not start or go on (no run to resume, bad input, ...)."""
    return {"id": ident, "status": ERROR, "answer": None, "stop_reason": "error", "run_id": run_id, "tokens": 0,
            "completion_tokens": 0, "calls": 0, "cache_hits": 0, "error": f"{type(error).__name__}: {error}",
            "resumed": False, "elapsed_s": round(elapsed_s, 3)}


def finished_row(store: TraceStore, ident: str, run_id: str) -> dict[str, Any] | None:
    """The line of a run that finished but whose line was lost (a crash between its seal
    and its results line), read from its run_finished event."""
    events = store.events(run_id, types={"run_finished"})
    if not events:
        return None
    end = events[-1]
    status = store.run(run_id)["status"]  # type: ignore[index]
    return {"id": ident, "status": ERROR if status == "error" else FINISHED, "answer": end["answer"],
            "stop_reason": end["stop_reason"], "run_id": run_id, "tokens": end["usage"].get("total_tokens", 0),
            "completion_tokens": end["usage"].get("completion_tokens", 0), "calls": end["model_calls"],
            "cache_hits": end.get("cache_hits", 0), "error": None, "resumed": True, "elapsed_s": 0.0}


async def run_input(graph: str, ident: str, graph_input: dict[str, Any], run_id: str, *, store: TraceStore,
                    checkpoint_path: Path | None, config: Config, params: dict[str, Any],
                    budget_tokens: int | None, models: dict[str, Model] | None = None,
                    restarted: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run `graph_input` as run `run_id`, or resume that run if the store has it.

    A run the store lists as finished is not run again (its line is rebuilt from its
    trace); an unfinished or failed one is resumed, so its finished model calls are not
    paid again (one stopped before its first checkpoint starts again under its own id). A
    run that cannot be resumed (it ran steps without a checkpoint, or its checkpoint is
    ahead of a damaged trace) starts over under a new id, passed to `restarted` first (to
    be recorded). Never raises for one input's failure: the
    returned line says what happened.
    """
    started = time.perf_counter()
    row = store.run(run_id)
    try:
        if row is not None and row["status"] == FINISHED:
            rebuilt = finished_row(store, ident, run_id)
            if rebuilt is not None:
                return rebuilt
        if row is not None:
            try:
                result = await resume(run_id, config=config, models=models, store=store, force=True)
                return result_row(ident, result, resumed=True, elapsed_s=time.perf_counter() - started)
            except (RunNotResumable, TraceUnusable):
                run_id = uuid.uuid4().hex  # nothing to resume from: start over, recorded first
                if restarted is not None:
                    restarted(run_id)
        result = await run(graph, graph_input, config=config, params=params, budget=Budget(max_tokens=budget_tokens),
                           models=models, store=store, checkpoint_path=checkpoint_path, run_id=run_id)
        return result_row(ident, result, resumed=False, elapsed_s=time.perf_counter() - started)
    except RunFailed as exc:
        return result_row(ident, exc.result, resumed=row is not None, elapsed_s=time.perf_counter() - started)
    except (ConfigError, ModelUnavailable, ValueError) as exc:
        return error_row(ident, run_id if store.run(run_id) else None, exc, time.perf_counter() - started)
