"""What every run shares, whether started, resumed, replayed or continued after a person's
decision: the graph invoked under its RunContext, the outcome recorded and sealed, and the
result (RunResult) or the failure (RunFailed)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from refinegraph.budget import BudgetExceeded
from refinegraph.compiled import RECURSION_LIMIT, compiled_graph
from refinegraph.config import Config, ConfigError
from refinegraph.context import ReplayMiss, RunContext
from refinegraph.events import ErrorEvent, RunFinished, RunInterrupted
from refinegraph.models import Model, ModelError, ModelUnavailable, build_model
from refinegraph.models.base import Usage
from refinegraph.registry import get_graph
from refinegraph.runs.checkpoints import _checkpointer
from refinegraph.tool_calls import ToolOffer
from refinegraph.trace.store import BaseTraceStore
from refinegraph.trace.verify import verify_run


class RunResult(BaseModel):
    """What a run returns (and what `refinegraph run --json` prints)."""

    answer: str | None
    run_id: str
    graph: str
    stop_reason: str
    usage: dict[str, int]
    model_calls: int
    cache_hits: int = 0
    retries: int = 0
    fallbacks: dict[str, int] = Field(default_factory=dict)
    cost_usd: float | None = None
    error: str | None = None
    state: dict[str, Any] = Field(default_factory=dict, exclude=True)


class RunFailed(RuntimeError):
    """A run that ended in an error; its trace is sealed and names the failure."""

    def __init__(self, result: RunResult, cause: BaseException):
        super().__init__(f"run {result.run_id} failed: {cause}")
        self.result, self.cause = result, cause


class RunNotResumable(ValueError):
    """Resume was asked of a run that cannot or need not be resumed."""


class TraceUnusable(ValueError):
    """A recorded run whose trace cannot serve a replay or a resume (it names why)."""


def _model_names(graph: str, roles: dict[str, str], params: dict[str, Any], config: Config) -> list[str]:
    """Every model the run may call: those its roles name and those its graph asks for."""
    spec = get_graph(graph)
    extra = spec.uses_models(params, config) if spec.uses_models else []
    return sorted(set(roles.values()) | set(extra))


def _build_models(config: Config, names: list[str], supplied: dict[str, Model] | None) -> dict[str, Model]:
    """A backend for every model named (`supplied` ones win, e.g. a test double)."""
    supplied = supplied or {}
    built = {}
    for name in names:
        built[name] = supplied[name] if name in supplied else build_model(name, config.spec(name))
    return built


def _model_summary(config: Config, models: dict[str, Model]) -> dict[str, dict[str, Any]]:
    """What the trace records of each model: enough to audit and to replay."""
    out = {}
    for name, model in sorted(models.items()):
        spec = config.models.get(name)
        entry = spec.model_dump(include={"base_url", "model", "max_n", "price_input_per_mtok",
                                         "price_output_per_mtok"}) if spec else {}
        out[name] = {**entry, "backend": model.backend, "supports_json_schema": model.supports_json_schema}
    return out


def _usage_dict(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "cached_prompt_tokens": usage.cached_prompt_tokens,
            "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _interrupt_reason(exc: BaseException) -> str:
    """What stopped a run, from its cancellation (the CLI cancels with the signal's name)."""
    reason = str(exc.args[0]) if exc.args and exc.args[0] else ""
    return reason or "cancelled (Ctrl-C, or the caller cancelled the run's task)"


async def _execute(ctx: RunContext, graph_name: str, graph_input: Any, params: dict[str, Any], *,
                   checkpoint: bool, checkpoint_path: Path | None) -> RunResult:
    state: dict[str, Any] = {}
    error: BaseException | None = None
    async with _checkpointer(checkpoint, checkpoint_path, ctx.writer) as saver:
        compiled = compiled_graph(graph_name, params, saver)
        config = {"configurable": {"thread_id": ctx.run_id}, "recursion_limit": RECURSION_LIMIT}
        try:
            # "sync": each step's checkpoint is on disk before the next step starts.
            durable = {"durability": "sync"} if saver is not None else {}
            state = await compiled.ainvoke(graph_input, config=config, context=ctx, **durable)
        except BudgetExceeded as exc:  # a graph that did not handle it: still a budget stop
            state = {"stop_reason": "budget", "answer": None}
            ctx.fallback("budget_unhandled", str(exc))
        except (ModelError, ModelUnavailable, ReplayMiss) as exc:
            error = exc
        except (asyncio.CancelledError, KeyboardInterrupt) as exc:
            # Interrupted, not finished: what it did so far is committed with why it stopped,
            # and the run stays unsealed, listed as interrupted, so `resume` finishes it.
            ctx.emit(RunInterrupted(reason=_interrupt_reason(exc)))
            ctx.writer.set_status("interrupted")
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, the trace sealed, then re-raised as RunFailed
            ctx.emit(ErrorEvent(error_class=type(exc).__name__, message=str(exc)[:2000]))
            error = exc
        if error is None and state.get("__interrupt__"):
            if saver is not None:
                return _waiting(ctx, graph_name, state)
            error = ConfigError(f"graph {graph_name!r} waits on a person (interrupt()), which needs "
                                "checkpoint=True")
            ctx.emit(ErrorEvent(error_class="ConfigError", message=str(error)))
    stop_reason = "error" if error else state.get("stop_reason", "done")
    result = RunResult(
        answer=None if error else state.get("answer"), run_id=ctx.run_id, graph=graph_name,
        stop_reason=stop_reason, usage=_usage_dict(ctx.usage), model_calls=ctx.model_calls,
        cache_hits=ctx.cache_hits, retries=ctx.retries, fallbacks=dict(ctx.fallbacks),
        cost_usd=round(ctx.cost_usd, 8) if ctx.cost_usd else None,
        error=f"{type(error).__name__}: {error}" if error else None, state=state,
    )
    ctx.emit(RunFinished(answer=result.answer, stop_reason=stop_reason, usage=result.usage,
                         model_calls=ctx.model_calls, cache_hits=ctx.cache_hits))
    await ctx.writer.seal_async("error" if error else "finished", stop_reason, result.answer)
    if error is not None:
        raise RunFailed(result, error) from error
    return result


def _waiting(ctx: RunContext, graph_name: str, state: dict[str, Any]) -> RunResult:
    """A graph paused by LangGraph's interrupt() to wait on a person: the trace stays open
    (unsealed), the run is listed with the status its interrupt names (e.g.
    "awaiting_approval") and no owner, so whoever decides may continue it (refinegraph.approval)."""
    value = state["__interrupt__"][0].value
    status = str(value.get("status", "awaiting_input")) if isinstance(value, dict) else "awaiting_input"
    ctx.writer.list_as(status=status, stop_reason=status, owner=None)
    return RunResult(answer=None, run_id=ctx.run_id, graph=graph_name, stop_reason=status,
                     usage=_usage_dict(ctx.usage), model_calls=ctx.model_calls, cache_hits=ctx.cache_hits,
                     retries=ctx.retries, fallbacks=dict(ctx.fallbacks),
                     cost_usd=round(ctx.cost_usd, 8) if ctx.cost_usd else None, state=state)


async def _close(built: dict[str, Model], supplied: dict[str, Model] | None) -> None:
    for name, model in built.items():
        if not supplied or name not in supplied:
            await model.aclose()


def _conversation(store: BaseTraceStore, started: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The recorded run's conversation (its blob), or None when its input was one task."""
    digest = started.get("conversation_blob")
    return store.get_blob(digest) if digest else None


def _tools(store: BaseTraceStore, started: dict[str, Any]) -> ToolOffer | None:
    """The tools the recorded run's client offered (their blob), or None."""
    digest = started.get("tools_blob")
    return ToolOffer.model_validate(store.get_blob(digest)) if digest else None


def _recorded(store: BaseTraceStore, run_id: str, purpose: str) -> dict[str, Any]:
    """The run's run_started event, after checking that its trace holds."""
    report = verify_run(store, run_id)
    if not report.ok:
        raise TraceUnusable(f"cannot {purpose} run {run_id}: its trace does not verify "
                            f"(event {report.bad_seq}: {report.problem})")
    events = store.events(run_id, types={"run_started"})
    if not events:
        raise TraceUnusable(f"cannot {purpose} run {run_id}: it has no run_started event")
    return events[0]
