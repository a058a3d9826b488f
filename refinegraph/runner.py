"""Running a registered graph on one input: start, resume, replay.

A run gets an id, a trace (run_started ... run_finished, hash-chained), a RunContext
handed to every node, and a LangGraph SQLite checkpoint under the same id, so an
interrupted run resumes where it stopped and re-pays no model call that had finished.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from pydantic import BaseModel, Field

from refinegraph import __version__
from refinegraph.budget import Budget, BudgetExceeded
from refinegraph.cache import ReplayCache
from refinegraph.config import Config, ConfigError, home, load_config
from refinegraph.context import ReplayMiss, RunContext
from refinegraph.events import DECISION_TYPES, ErrorEvent, RunFinished, RunResumed, RunStarted
from refinegraph.models import Model, ModelError, ModelUnavailable, build_model
from refinegraph.registry import get_graph
from refinegraph.trace.chain import canonical_json
from refinegraph.trace.store import NullWriter, TraceStore, TraceWriter

RECURSION_LIMIT = 200


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
    """Resume was asked of a run that has nothing left to do."""


class ReplayMissingRun(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def default_store() -> TraceStore:
    return TraceStore(home() / "traces.sqlite")


class TraceFirstSaver(AsyncSqliteSaver):
    """LangGraph's SQLite checkpointer that commits the run's held trace events before
    each checkpoint write, so a resumed run never skips a step its trace lacks."""

    flush: Any = None

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return await super().aput(*args, **kwargs)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return await super().aput_writes(*args, **kwargs)


@contextlib.asynccontextmanager
async def _checkpointer(enabled: bool, path: Path | None, flush: Any) -> AsyncIterator[Any]:
    if not enabled:
        yield None
        return
    path = path or home() / "checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    async with TraceFirstSaver.from_conn_string(str(path)) as saver:
        saver.flush = flush
        yield saver


def _models_for(config: Config, roles: dict[str, str]) -> dict[str, Model]:
    names = set(roles.values())
    return {name: build_model(name, config.spec(name)) for name in names}


def _model_summary(config: Config, models: dict[str, Model]) -> dict[str, dict[str, Any]]:
    """What the trace records of each model: enough to audit and to replay."""
    out = {}
    for name, model in sorted(models.items()):
        spec = config.models.get(name)
        entry = spec.model_dump(include={"base_url", "model", "max_n", "price_input_per_mtok",
                                         "price_output_per_mtok"}) if spec else {}
        out[name] = {**entry, "backend": model.backend, "supports_json_schema": model.supports_json_schema}
    return out


def _usage_dict(ctx: RunContext) -> dict[str, int]:
    u = ctx.usage
    return {"prompt_tokens": u.prompt_tokens, "cached_prompt_tokens": u.cached_prompt_tokens,
            "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


_compiled: dict[tuple[str, str], Any] = {}


def compiled_graph(graph_name: str, params: dict[str, Any], checkpointer: Any = None) -> Any:
    """The compiled graph for (graph, params), built once per process.

    Compiling costs milliseconds, more than refinegraph's whole per-run bookkeeping, so
    each run takes a shallow copy of the cached graph with its own checkpointer.
    """
    key = (graph_name, canonical_json(params))
    if key not in _compiled:
        _compiled[key] = get_graph(graph_name).build(params, checkpointer=None)
    graph = _compiled[key]
    return graph.copy({"checkpointer": checkpointer}) if checkpointer is not None else graph


def clear_compiled_graphs() -> None:
    """Forget compiled graphs (after changing a graph's nodes at run time, as tests do)."""
    _compiled.clear()


async def _execute(ctx: RunContext, graph_name: str, graph_input: dict[str, Any] | None,
                   params: dict[str, Any], store: TraceStore | None, *, checkpoint: bool,
                   checkpoint_path: Path | None) -> RunResult:
    state: dict[str, Any] = {}
    error: BaseException | None = None
    async with _checkpointer(checkpoint, checkpoint_path, ctx.writer.flush) as saver:
        compiled = compiled_graph(graph_name, params, saver)
        config = {"configurable": {"thread_id": ctx.run_id}, "recursion_limit": RECURSION_LIMIT}
        try:
            # "sync": each step's checkpoint is on disk before the next step starts, so a
            # crash never loses a finished step (LangGraph's default writes it in the background).
            durable = {"durability": "sync"} if saver is not None else {}
            state = await compiled.ainvoke(graph_input, config=config, context=ctx, **durable)
        except BudgetExceeded as exc:  # a graph that did not handle it: still a budget stop
            state = {"stop_reason": "budget", "answer": None}
            ctx.fallback("budget_unhandled", str(exc))
        except (ModelError, ModelUnavailable, ReplayMiss) as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - recorded, the trace sealed, then re-raised as RunFailed
            ctx.emit(ErrorEvent(error_class=type(exc).__name__, message=str(exc)[:2000]))
            error = exc
    stop_reason = "error" if error else state.get("stop_reason", "done")
    result = RunResult(
        answer=None if error else state.get("answer"), run_id=ctx.run_id, graph=graph_name,
        stop_reason=stop_reason, usage=_usage_dict(ctx), model_calls=ctx.model_calls,
        cache_hits=ctx.cache_hits, retries=ctx.retries, fallbacks=dict(ctx.fallbacks),
        cost_usd=round(ctx.cost_usd, 8) if ctx.cost_usd else None,
        error=f"{type(error).__name__}: {error}" if error else None, state=state,
    )
    finished = ctx.emit(RunFinished(answer=result.answer, stop_reason=stop_reason, usage=result.usage,
                                    model_calls=ctx.model_calls, cache_hits=ctx.cache_hits))
    if store is not None:
        store.finish_run(ctx.run_id, "error" if error else "finished", stop_reason, result.answer,
                         ctx.writer.last_hash)
    del finished
    if error is not None:
        raise RunFailed(result, error) from error
    return result


async def run(graph: str, task: str | dict[str, Any], *, config: Config | None = None,
              params: dict[str, Any] | None = None, budget: Budget | None = None,
              models: dict[str, Model] | None = None, store: TraceStore | None = None,
              trace: bool = True, checkpoint: bool = True, checkpoint_path: Path | None = None,
              run_id: str | None = None) -> RunResult:
    """Run `graph` on `task` and return its answer; the trace is written as it goes.

    `models` overrides the config's backends by name (e.g. a test double).
    """
    spec = get_graph(graph)
    config = config or load_config()
    roles = dict(config.roles)
    for name in roles.values():
        if models is None or name not in models:
            config.spec(name)
    run_id = run_id or uuid.uuid4().hex
    graph_input = task if isinstance(task, dict) else {spec.input_key: task}
    params = params or {}
    budget = budget or Budget()
    if trace:
        store = store or default_store()
        store.create_run(run_id, graph, str(graph_input.get(spec.input_key, graph_input)))
        writer: Any = TraceWriter(store, run_id)
    else:
        store, writer, checkpoint = None, NullWriter(run_id), False
    built = {**_models_for(config, {k: v for k, v in roles.items() if not models or v not in models}),
             **(models or {})}
    ctx = RunContext(run_id=run_id, models=built, roles=roles, writer=writer, budget=budget, config=config)
    ctx.emit(RunStarted(graph=graph, input=graph_input, params=params, roles=roles,
                        models=_model_summary(config, built), budget=budget.limits(),
                        version=__version__))
    try:
        return await _execute(ctx, graph, graph_input, params, store, checkpoint=checkpoint,
                              checkpoint_path=checkpoint_path)
    finally:
        await _close(built, models)


async def _close(built: dict[str, Model], supplied: dict[str, Model] | None) -> None:
    for name, model in built.items():
        if not supplied or name not in supplied:
            await model.aclose()


def _started_event(store: TraceStore, run_id: str) -> dict[str, Any]:
    events = store.events(run_id, types={"run_started"})
    if not events:
        raise ReplayMissingRun(f"run {run_id} has no run_started event in {store.path}")
    return events[0]


async def resume(run_id: str, *, config: Config | None = None, models: dict[str, Model] | None = None,
                 store: TraceStore | None = None, checkpoint_path: Path | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint.

    Finished nodes are not run again (checkpoint); model calls that finished inside the
    node that was interrupted are served from the run's own trace (replay cache).
    """
    store = store or default_store()
    run_id = store.find_run(run_id)
    status = store.run(run_id)["status"]  # type: ignore[index]
    if status == "finished":
        raise RunNotResumable(f"run {run_id} finished; there is nothing to resume (replay it instead)")
    started = _started_event(store, run_id)
    config = config or load_config()
    roles = started["roles"]
    built = {**_models_for(config, {k: v for k, v in roles.items() if not models or v not in models}),
             **(models or {})}
    cache = ReplayCache.from_trace(store, run_id)
    recorded = [e for e in store.events(run_id, types={"llm_call"}) if e["source"] == "backend"]
    budget = Budget(**{f"max_{k}": v for k, v in started["budget"].items()})
    budget.tokens = sum(e["prompt_tokens"] + e["completion_tokens"] for e in recorded)
    budget.calls = len(recorded)
    store.mark_running(run_id)
    ctx = RunContext(run_id=run_id, models=built, roles=roles, writer=TraceWriter(store, run_id),
                     budget=budget, cache=cache, config=config, charge_cache_hits=False)
    ctx.model_calls = sum(e["requests"] for e in recorded)
    for e in recorded:
        ctx.usage.prompt_tokens += e["prompt_tokens"]
        ctx.usage.cached_prompt_tokens += e["cached_prompt_tokens"]
        ctx.usage.completion_tokens += e["completion_tokens"]
    ctx.emit(RunResumed(recorded_calls=len(recorded)))
    try:
        return await _execute(ctx, started["graph"], None, started["params"], store, checkpoint=True,
                              checkpoint_path=checkpoint_path)
    finally:
        await _close(built, models)


class ReplayModel:
    """Stands in for a recorded model during replay: it is never asked (cache only)."""

    backend = "replay"
    supports_json_schema = True

    def __init__(self, name: str, supports_json_schema: bool = True):
        self.name = name
        self.supports_json_schema = supports_json_schema

    async def sample(self, messages, **kwargs):  # pragma: no cover - replay_only never reaches it
        raise ReplayMiss(f"model {self.name!r} has no recording for this call")

    async def aclose(self) -> None:
        return None


class ReplayResult(RunResult):
    replay_of: str
    decisions_match: bool
    answer_matches: bool


def decisions(store: TraceStore, run_id: str) -> list[dict[str, Any]]:
    """The run's decision events without run-specific fields, for comparing runs."""
    out = []
    for event in store.events(run_id, types=set(DECISION_TYPES)):
        out.append({k: v for k, v in event.items() if k not in ("run_id", "seq", "ts")})
    return out


async def replay(run_id: str, *, store: TraceStore | None = None) -> ReplayResult:
    """Re-run a recorded run from its trace alone: no model is called.

    The replay is itself a run (with `replay_of` set) whose decisions are compared with
    the original's.
    """
    store = store or default_store()
    original = store.find_run(run_id)
    started = _started_event(store, original)
    roles = started["roles"]
    models = {name: ReplayModel(name, started["models"].get(name, {}).get("supports_json_schema", True))
              for name in set(roles.values())}
    new_id = uuid.uuid4().hex
    key = get_graph(started["graph"]).input_key
    store.create_run(new_id, started["graph"], str(started["input"].get(key, started["input"])),
                     replay_of=original)
    ctx = RunContext(run_id=new_id, models=models, roles=roles, writer=TraceWriter(store, new_id),
                     budget=Budget(**{f"max_{k}": v for k, v in started["budget"].items()}),
                     cache=ReplayCache.from_trace(store, original), replay_only=True)
    ctx.emit(RunStarted(graph=started["graph"], input=started["input"], params=started["params"],
                        roles=roles, models=started["models"], budget=started["budget"],
                        replay_of=original, version=__version__))
    result = await _execute(ctx, started["graph"], started["input"], started["params"], store,
                            checkpoint=False, checkpoint_path=None)
    finished = store.events(original, types={"run_finished"})
    original_answer = finished[-1]["answer"] if finished else None
    return ReplayResult(**result.model_dump(), replay_of=original,
                        decisions_match=decisions(store, original) == decisions(store, new_id),
                        answer_matches=original_answer == result.answer)


__all__ = ["ConfigError", "RunFailed", "RunResult", "decisions", "replay", "resume", "run"]
