"""Running a registered graph on one input: start, resume, replay.

A run gets an id, a trace (run_started ... run_finished, hash-chained) and a RunContext
handed to every node. The trace is also what makes a run resumable: `resume` runs the graph
again from its recorded input, every model call that had finished served from the trace
(the replay cache), so nothing finished is paid twice and no checkpoint file is needed.
LangGraph's checkpointer is used only where LangGraph itself needs one: a graph that waits
on a human through `interrupt()` (pass `checkpoint=True`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pydantic_core
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from pydantic import BaseModel, Field

from refinegraph.budget import Budget, BudgetExceeded
from refinegraph.cache import ReplayCache
from refinegraph.compiled import RECURSION_LIMIT, clear_compiled_graphs, compiled_graph
from refinegraph.config import Config, ConfigError, ModelSpec, home, load_config
from refinegraph.context import ReplayMiss, RunContext
from refinegraph.conversation import check_conversation, last_user_text
from refinegraph.events import DECISION_TYPES, ErrorEvent, RunFinished, RunInterrupted, RunResumed, RunStarted
from refinegraph.models import Model, ModelError, ModelUnavailable, build_model
from refinegraph.models.base import Usage
from refinegraph.registry import get_graph
from refinegraph.sqlite_files import BUSY_TIMEOUT_S, prepare_once
from refinegraph.trace.store import BaseTraceStore, NullWriter, TraceWriter, open_store
from refinegraph.trace.verify import verify_run
from refinegraph.version import __version__


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


def default_store(config: Config | None = None) -> BaseTraceStore:
    """The store runs are recorded in: REFINEGRAPH_TRACE_STORE, else the config's [trace]
    store, else $REFINEGRAPH_HOME/traces.sqlite."""
    settings = (config or Config()).trace
    return open_store(settings.location(), schema=settings.schema_, synchronous=settings.synchronous)


_shared: dict[tuple[int, str, str, str], BaseTraceStore] = {}
_shared_lock = threading.Lock()


def shared_store(config: Config | None = None) -> BaseTraceStore:
    """The store `run`, `resume` and `replay` use when given none: one per location and
    process, opened on first use and closed at exit. Opening a store per run costs a
    connection and, on SQLite, a WAL checkpoint when the last connection closes: more than
    the whole trace of a fast run. (A store made in a parent process is not reused in a
    forked child: the key holds the process id.)"""
    settings = (config or Config()).trace
    key = (os.getpid(), settings.location(), settings.schema_, settings.synchronous)
    with _shared_lock:
        store = _shared.get(key)
        if store is None:
            if not _shared:
                atexit.register(close_shared_stores)
            store = _shared[key] = default_store(config)
        return store


def close_shared_stores() -> None:
    """Close the stores `shared_store` opened (at exit; tests that move REFINEGRAPH_HOME)."""
    with _shared_lock:
        for key, store in list(_shared.items()):
            if key[0] == os.getpid():
                store.close()
        _shared.clear()


class TraceFirstSaver(AsyncSqliteSaver):
    """LangGraph's SQLite checkpointer that commits the run's held trace events before each
    checkpoint write, so a paused run's trace is never behind its checkpoint."""

    flush: Any = None

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        self.flush()
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return await super().aput_writes(*args, **kwargs)


def checkpoint_file(path: Path | None = None) -> Path:
    """LangGraph's checkpoints, for runs that wait on a human ($REFINEGRAPH_HOME/checkpoints.sqlite)."""
    path = path or home() / "checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def _checkpointer(enabled: bool, path: Path | None, writer: Any) -> AsyncIterator[Any]:
    if not enabled:
        yield None
        return
    async with open_saver(checkpoint_file(path)) as saver:
        saver.flush = writer.flush
        yield saver


@contextlib.asynccontextmanager
async def open_saver(path: Path) -> AsyncIterator[TraceFirstSaver]:
    """A checkpointer on `path`, its schema made under the setup lock (concurrent runs and
    processes open the same file: see refinegraph.sqlite_files)."""
    prepare_once(path, lambda conn: SqliteSaver(conn).setup())
    async with aiosqlite.connect(str(path), timeout=BUSY_TIMEOUT_S) as conn:
        yield TraceFirstSaver(conn)


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


def _check_recordable(graph: str, graph_input: dict[str, Any]) -> None:
    """Refuse, before anything is recorded, an input the trace cannot store (a lone UTF-16
    surrogate, say, from undecodable bytes in argv): it would fail at the run's first event."""
    try:
        pydantic_core.to_json(graph_input)
    except pydantic_core.PydanticSerializationError as exc:
        raise ConfigError(f"the input of graph {graph!r} cannot be recorded: {exc}") from None


def new_run_id() -> str:
    """A fresh run id (callers that must print it on an interrupt make it first)."""
    return uuid.uuid4().hex


async def run(graph: str, task: str | dict[str, Any] | None = None, *, config: Config | None = None,
              params: dict[str, Any] | None = None, budget: Budget | None = None,
              models: dict[str, Model] | None = None, store: BaseTraceStore | None = None,
              trace: bool = True, checkpoint: bool = False, checkpoint_path: Path | None = None,
              run_id: str | None = None, messages: list[dict[str, Any]] | None = None) -> RunResult:
    """Run `graph` on `task` and return its answer; the trace is written as it goes.

    `messages` is a conversation to run on instead (its last user turn is the task): the
    solver sees it as sent, judging roles quote it, the trace keeps it as a blob.

    `models` overrides the config's backends by name (e.g. a test double). Everything
    that can be checked (graph, models, params, input) is checked before the run is
    recorded. The trace alone makes the run resumable; `checkpoint=True` adds LangGraph's
    checkpointer, for graphs that pause on `interrupt()`. With no `store`, the process's
    shared store of the config's location is used (see shared_store).
    """
    spec = get_graph(graph)
    config = config or load_config()
    if messages is not None:
        try:
            messages = check_conversation(messages)
        except ValueError as exc:
            raise ConfigError(f"messages: {exc}") from None
        task = task if task is not None else last_user_text(messages)
    graph_input = task if isinstance(task, dict) else {spec.input_key: task or ""}
    if not str(graph_input.get(spec.input_key, "")).strip():
        raise ConfigError(f"the input of graph {graph!r} is empty")
    _check_recordable(graph, graph_input)
    params = params or {}
    compiled_graph(graph, params)
    roles = dict(config.roles)
    built = _build_models(config, _model_names(graph, roles, params, config), models)
    budget = budget or Budget()
    run_id = run_id or new_run_id()
    try:
        if trace:
            store = store or shared_store(config)
            writer: Any = TraceWriter(store, run_id, new=True, deferred=True)
            writer.create_run(graph, str(graph_input.get(spec.input_key, graph_input)), owner=_owner())
        else:
            store, writer, checkpoint = None, NullWriter(run_id), False
        ctx = RunContext(run_id=run_id, models=built, roles=roles, writer=writer, budget=budget, config=config,
                         conversation=messages)
        ctx.emit(RunStarted(graph=graph, input=graph_input, params=params, roles=roles,
                            models=_model_summary(config, built), budget=budget.limits(), version=__version__,
                            conversation_blob=writer.put_blob(messages) if messages else None))
        await writer.commit()  # listed, with its input, before any work
        return await _execute(ctx, graph, graph_input, params, checkpoint=checkpoint,
                              checkpoint_path=checkpoint_path)
    finally:
        await _close(built, models)


async def _close(built: dict[str, Model], supplied: dict[str, Model] | None) -> None:
    for name, model in built.items():
        if not supplied or name not in supplied:
            await model.aclose()


def _conversation(store: BaseTraceStore, started: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The recorded run's conversation (its blob), or None when its input was one task."""
    digest = started.get("conversation_blob")
    return store.get_blob(digest) if digest else None


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


def executions(events: list[dict[str, Any]]) -> dict[int, int]:
    """event seq -> the seq of the node_started that opened the node execution it belongs to
    (events a node emits between its node_started and node_finished; the latest open
    execution of that node name, so parallel runs of one node are told apart by order only)."""
    open_: dict[str | None, list[int]] = {}
    owner: dict[int, int] = {}
    for event in events:
        node = event.get("node")
        if event["type"] == "node_started":
            open_.setdefault(node, []).append(event["seq"])
            owner[event["seq"]] = event["seq"]
        elif node is not None and open_.get(node):
            owner[event["seq"]] = open_[node][-1]
            if event["type"] == "node_finished":
                open_[node].pop()
    return owner


def superseded(events: list[dict[str, Any]]) -> set[int]:
    """Node executions that a resume ran again (their run_resumed `superseded` lists):
    their events stay in the chain, but their decisions are not the run's."""
    return {seq for event in events if event["type"] == "run_resumed" for seq in event.get("superseded", [])}


def _restore(ctx: RunContext, store: BaseTraceStore, run_id: str) -> tuple[int, list[int]]:
    """Put back what the run had paid (tokens, calls, cost) and counted (retries): the resume
    runs every node again, each recorded call served from the cache without charge, and
    records its own fallbacks. Returns the number of recorded model calls and the node
    executions the resume supersedes (by node_started seq; see RunResumed.superseded)."""
    events = store.events(run_id)
    before = superseded(events)
    again = [e["seq"] for e in events if e["type"] == "node_started" and e["seq"] not in before]
    calls = 0
    for event in events:
        kind = event["type"]
        if kind == "llm_call":
            calls += 1
            if event["source"] == "backend":  # paid, whichever step it was in
                ctx.model_calls += event["requests"]
                ctx.budget.charge(event["prompt_tokens"] + event["completion_tokens"])
                ctx.usage = ctx.usage + Usage(prompt_tokens=event["prompt_tokens"],
                                              cached_prompt_tokens=event["cached_prompt_tokens"],
                                              completion_tokens=event["completion_tokens"])
                ctx.cost_usd += event["cost_usd"] or 0.0
        elif kind == "retry":
            ctx.retries += 1
    return calls, again


async def resume(run_id: str, *, config: Config | None = None, models: dict[str, Model] | None = None,
                 store: BaseTraceStore | None = None, force: bool = False) -> RunResult:
    """Finish an interrupted run from its trace.

    The graph runs again from the run's recorded input under the same id; every model
    call that had finished is served from the run's own trace (not paid again), every
    other call goes to the model. A run listed as running whose process is alive on this
    host is refused unless `force`; an interrupted one is resumed without.
    """
    store = store or shared_store(config)
    run_id = store.find_run(run_id)
    row = store.run(run_id)
    if row["status"] == "finished":  # type: ignore[index]
        raise RunNotResumable(f"run {run_id} finished; there is nothing to resume (replay it instead)")
    if row["replay_of"]:  # type: ignore[index]
        raise RunNotResumable(f"run {run_id} is a replay; replay {row['replay_of']} again instead")  # type: ignore[index]
    if row["status"] == "awaiting_approval":  # type: ignore[index]
        raise RunNotResumable(f"run {run_id} awaits a human decision; answer it instead of resuming")
    started = _recorded(store, run_id, "resume")
    if not store.claim_run(run_id, row["owner"], _owner(), force=force, status=row["status"]):  # type: ignore[index]
        raise RunNotResumable(f"run {run_id} is still running in process {row['owner']}; "  # type: ignore[index]
                              "pass force=True (--force) if that process is gone")
    config = config or load_config()
    roles = started["roles"]
    built = _build_models(config, sorted(set(roles.values()) | set(started["models"])), models)
    try:
        ctx = RunContext(run_id=run_id, models=built, roles=roles, writer=TraceWriter(store, run_id, deferred=True),
                         budget=Budget(**{f"max_{k}": v for k, v in started["budget"].items()}),
                         cache=ReplayCache.from_trace(store, run_id), config=config, charge_cache_hits=False,
                         conversation=_conversation(store, started))
        recorded, again = _restore(ctx, store, run_id)
        ctx.emit(RunResumed(recorded_calls=recorded, from_checkpoint=False, superseded=again))
        await ctx.writer.commit()
        return await _execute(ctx, started["graph"], started["input"], started["params"],
                              checkpoint=False, checkpoint_path=None)
    finally:
        await _close(built, models)


class ReplayModel:
    """Stands in for a recorded model during replay: it is never asked (cache only)."""

    backend = "replay"

    def __init__(self, name: str, supports_json_schema: bool = True):
        self.name = name
        self.supports_json_schema = supports_json_schema

    async def sample(self, messages, **kwargs):  # pragma: no cover - replay_only never reaches it
        raise ReplayMiss(f"model {self.name!r} has no recording for this call")

    async def aclose(self) -> None:
        return None


def _recorded_prices(models: dict[str, dict[str, Any]], roles: dict[str, str], base: Config | None = None) -> Config:
    """The recorded models' prices, so a replay reports (and decides on) the same cost; the
    rest (the [sql] limits a replayed SQL graph runs its statements under, ...) from `base`."""
    specs = {name: ModelSpec(price_input_per_mtok=entry.get("price_input_per_mtok"),
                             price_output_per_mtok=entry.get("price_output_per_mtok"))
             for name, entry in models.items()}
    return (base or Config()).model_copy(update={"models": specs or {"local": ModelSpec()}, "roles": roles})


class ReplayResult(RunResult):
    replay_of: str
    decisions_match: bool
    answer_matches: bool


def decisions(store: BaseTraceStore, run_id: str) -> list[dict[str, Any]]:
    """The run's decision events without run-specific fields, for comparing runs; those of
    node executions a resume ran again (superseded) are left out, their rerun's kept."""
    volatile = {"run_id", "seq", "ts", "elapsed_s", "elapsed_ms"}
    events = store.events(run_id)
    owner, dropped = executions(events), superseded(events)
    return [{k: v for k, v in event.items() if k not in volatile} for event in events
            if event["type"] in DECISION_TYPES and owner.get(event["seq"]) not in dropped]


async def replay(run_id: str, *, store: BaseTraceStore | None = None, config: Config | None = None) -> ReplayResult:
    """Re-run a recorded run from its trace alone: no model is called.

    The replay is itself a run (with `replay_of` set) whose decisions are compared with
    the original's. Its budget is the original's less wall time, which no replay
    reproduces: where the original was refused for time, the replay is refused alike. The
    models are the recorded ones; `config` gives the rest (a SQL run's [sql] limits).
    """
    store = store or shared_store(config)
    original = store.find_run(run_id)
    started = _recorded(store, original, "replay")
    roles = started["roles"]
    models: dict[str, Model] = {
        name: ReplayModel(name, started["models"].get(name, {}).get("supports_json_schema", True))
        for name in set(roles.values()) | set(started["models"])}
    limits = {f"max_{k}": v for k, v in started["budget"].items() if k != "seconds"}
    new_id = uuid.uuid4().hex
    key = get_graph(started["graph"]).input_key
    writer = TraceWriter(store, new_id, new=True)
    writer.create_run(started["graph"], str(started["input"].get(key, started["input"])), replay_of=original,
                      owner=_owner())
    ctx = RunContext(run_id=new_id, models=models, roles=roles, writer=writer,
                     budget=Budget(**limits), cache=ReplayCache.from_trace(store, original), replay_only=True,
                     config=_recorded_prices(started["models"], roles, config),
                     conversation=_conversation(store, started))
    ctx.emit(RunStarted(graph=started["graph"], input=started["input"], params=started["params"],
                        roles=roles, models=started["models"], budget=started["budget"],
                        replay_of=original, version=__version__, conversation_blob=started.get("conversation_blob")))
    result = await _execute(ctx, started["graph"], started["input"], started["params"], checkpoint=False,
                            checkpoint_path=None)
    finished = store.events(original, types={"run_finished"})
    original_answer = finished[-1]["answer"] if finished else None
    return ReplayResult(**result.model_dump(), replay_of=original,
                        decisions_match=decisions(store, original) == decisions(store, new_id),
                        answer_matches=original_answer == result.answer)


__all__ = ["RunResult", "RunFailed", "RunNotResumable", "TraceUnusable", "run", "resume", "replay",
           "decisions", "ConfigError", "compiled_graph", "clear_compiled_graphs", "RECURSION_LIMIT"]
