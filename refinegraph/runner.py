"""Running a registered graph on one input: start, resume, replay.

A run gets an id, a trace (run_started ... run_finished, hash-chained), a RunContext
handed to every node, and a LangGraph SQLite checkpoint under the same id, so an
interrupted run resumes where it stopped and re-pays no model call that had finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pydantic_core
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from pydantic import BaseModel, Field, ValidationError

from refinegraph import __version__
from refinegraph.budget import Budget, BudgetExceeded
from refinegraph.cache import ReplayCache
from refinegraph.config import Config, ConfigError, ModelSpec, home, load_config
from refinegraph.context import ReplayMiss, RunContext
from refinegraph.events import DECISION_TYPES, ErrorEvent, RunFinished, RunResumed, RunStarted
from refinegraph.models import Model, ModelError, ModelUnavailable, build_model
from refinegraph.models.base import Usage
from refinegraph.registry import get_graph
from refinegraph.sqlite_files import BUSY_TIMEOUT_S, prepare_once
from refinegraph.trace.chain import canonical_json
from refinegraph.trace.store import NullWriter, TraceStore, TraceWriter
from refinegraph.trace.verify import TraceMark, verify_run

RECURSION_LIMIT = 200
_log = logging.getLogger(__name__)


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


def default_store(*, full_check: bool = False) -> TraceStore:
    return TraceStore(home() / "traces.sqlite", full_check=full_check)


TRACE_STORE_KEY = "refinegraph_trace_store"
"""Checkpoint metadata: the path of the trace store the run's trace is in (a checkpoint
file may serve runs of several stores)."""
TRACE_SEQ_KEY = "refinegraph_trace_seq"
"""Checkpoint metadata: the run's next trace seq when the checkpoint was written. Every
event before it is committed, so every node that finished before it is in the checkpoint;
a node that finished at or after it may have to run again (a crash came between its
trace commit and its checkpoint), and its calls must then still be served from the trace."""


def trace_marks(checkpoint_path: Path | None = None, run_id: str | None = None) -> dict[str, TraceMark]:
    """run id -> how far its trace had reached when its latest checkpoint was written, and
    in which store (TRACE_SEQ_KEY, TRACE_STORE_KEY): a trace shorter than its mark lost
    events the checkpoint covers (a damaged or cut store). Read as SQL, metadata only, so
    checking a big checkpoint file costs no state decoding; `run_id`: that run's only."""
    path = checkpoint_path or home() / "checkpoints.sqlite"
    if not path.is_file():
        return {}
    marks: dict[str, TraceMark] = {}
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        query, args = "SELECT thread_id, metadata FROM checkpoints WHERE checkpoint_ns = ''", ()
        if run_id is not None:
            query, args = f"{query} AND thread_id = ?", (run_id,)
        rows = conn.execute(query, args).fetchall()
    except sqlite3.DatabaseError as exc:
        _log.warning("cannot read trace marks from %s (%s): runs are verified without them", path, exc)
        return {}
    finally:
        conn.close()
    for thread_id, metadata in rows:
        try:
            data = json.loads(metadata)
        except (TypeError, ValueError):
            continue
        mark = data.get(TRACE_SEQ_KEY)
        if isinstance(mark, int) and (thread_id not in marks or mark > marks[thread_id].events):
            marks[thread_id] = TraceMark(mark, data.get(TRACE_STORE_KEY))
    return marks


class TraceFirstSaver(AsyncSqliteSaver):
    """LangGraph's SQLite checkpointer that commits the run's held trace events before
    each checkpoint write, so a resumed run never skips a step its trace lacks; each
    checkpoint records how far the trace was (TRACE_SEQ_KEY)."""

    flush: Any = None
    writer: Any = None

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        self.flush()
        if self.writer is not None:
            metadata = {**metadata, TRACE_SEQ_KEY: self.writer.next_seq}
            if self.writer.store is not None:
                metadata[TRACE_STORE_KEY] = str(self.writer.store.path.resolve())
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return await super().aput_writes(*args, **kwargs)


def _checkpoint_path(path: Path | None) -> Path:
    path = path or home() / "checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def _checkpointer(enabled: bool, path: Path | None, writer: Any) -> AsyncIterator[Any]:
    if not enabled:
        yield None
        return
    async with _saver(_checkpoint_path(path)) as saver:
        saver.flush, saver.writer = writer.flush, writer
        yield saver


@contextlib.asynccontextmanager
async def _saver(path: Path) -> AsyncIterator[TraceFirstSaver]:
    """A checkpointer on `path`, its schema made under the setup lock (concurrent runs and
    processes open the same file: see refinegraph.sqlite_files)."""
    prepare_once(path, lambda conn: SqliteSaver(conn).setup())
    async with aiosqlite.connect(str(path), timeout=BUSY_TIMEOUT_S) as conn:
        yield TraceFirstSaver(conn)


_compiled: dict[tuple[str, str], Any] = {}


def compiled_graph(graph_name: str, params: dict[str, Any], checkpointer: Any = None) -> Any:
    """The compiled graph for (graph, params), built once per process.

    Compiling costs milliseconds, more than refinegraph's whole per-run bookkeeping, so
    each run takes a shallow copy of the cached graph with its own checkpointer. Bad
    params fail here, before any run is recorded.
    """
    key = (graph_name, canonical_json(params))
    if key not in _compiled:
        try:
            _compiled[key] = get_graph(graph_name).build(params, checkpointer=None)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"bad parameters for graph {graph_name!r}: {problems}") from None
    graph = _compiled[key]
    return graph.copy({"checkpointer": checkpointer}) if checkpointer is not None else graph


def clear_compiled_graphs() -> None:
    """Forget compiled graphs (after changing a graph's nodes at run time, as tests do)."""
    _compiled.clear()


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


async def _execute(ctx: RunContext, graph_name: str, graph_input: dict[str, Any] | None,
                   params: dict[str, Any], *, checkpoint: bool,
                   checkpoint_path: Path | None) -> RunResult:
    state: dict[str, Any] = {}
    error: BaseException | None = None
    async with _checkpointer(checkpoint, checkpoint_path, ctx.writer) as saver:
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
        except asyncio.CancelledError:
            # Interrupted, not finished: the events held so far are committed with why it
            # stopped, and the run stays unsealed so that `resume` can continue it.
            ctx.emit(ErrorEvent(error_class="CancelledError", message="the run's task was cancelled"))
            ctx.writer.flush()
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
    ctx.writer.seal("error" if error else "finished", stop_reason, result.answer)
    if error is not None:
        raise RunFailed(result, error) from error
    return result


def _waiting(ctx: RunContext, graph_name: str, state: dict[str, Any]) -> RunResult:
    """A graph paused by LangGraph's interrupt() to wait on a person: the trace stays open
    (unsealed), the run is listed with the status its interrupt names (e.g.
    "awaiting_approval") and no owner, so whoever decides may continue it (refinegraph.approval)."""
    value = state["__interrupt__"][0].value
    status = str(value.get("status", "awaiting_input")) if isinstance(value, dict) else "awaiting_input"
    ctx.writer.flush()
    if ctx.writer.store is not None:
        ctx.writer.store.transaction([("UPDATE runs SET status=?, stop_reason=?, owner=NULL WHERE run_id=?",
                                       (status, status, ctx.run_id))])
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


async def run(graph: str, task: str | dict[str, Any], *, config: Config | None = None,
              params: dict[str, Any] | None = None, budget: Budget | None = None,
              models: dict[str, Model] | None = None, store: TraceStore | None = None,
              trace: bool = True, checkpoint: bool = True, checkpoint_path: Path | None = None,
              run_id: str | None = None) -> RunResult:
    """Run `graph` on `task` and return its answer; the trace is written as it goes.

    `models` overrides the config's backends by name (e.g. a test double). Everything
    that can be checked (graph, models, params, input) is checked before the run is
    recorded.
    """
    spec = get_graph(graph)
    config = config or load_config()
    graph_input = task if isinstance(task, dict) else {spec.input_key: task}
    if not str(graph_input.get(spec.input_key, "")).strip():
        raise ConfigError(f"the input of graph {graph!r} is empty")
    _check_recordable(graph, graph_input)
    params = params or {}
    compiled_graph(graph, params)
    roles = dict(config.roles)
    built = _build_models(config, _model_names(graph, roles, params, config), models)
    budget = budget or Budget()
    run_id = run_id or uuid.uuid4().hex
    if trace:
        store = store or default_store()
        writer: Any = TraceWriter(store, run_id, new=True)
        writer.create_run(graph, str(graph_input.get(spec.input_key, graph_input)), owner=_owner())
    else:
        store, writer, checkpoint = None, NullWriter(run_id), False
    ctx = RunContext(run_id=run_id, models=built, roles=roles, writer=writer, budget=budget, config=config)
    ctx.emit(RunStarted(graph=graph, input=graph_input, params=params, roles=roles,
                        models=_model_summary(config, built), budget=budget.limits(), version=__version__))
    try:
        return await _execute(ctx, graph, graph_input, params, checkpoint=checkpoint,
                              checkpoint_path=checkpoint_path)
    finally:
        await _close(built, models)


async def _close(built: dict[str, Model], supplied: dict[str, Model] | None) -> None:
    for name, model in built.items():
        if not supplied or name not in supplied:
            await model.aclose()


def _recorded(store: TraceStore, run_id: str, purpose: str) -> dict[str, Any]:
    """The run's run_started event, after checking that its trace holds."""
    report = verify_run(store, run_id)
    if not report.ok:
        raise TraceUnusable(f"cannot {purpose} run {run_id}: its trace does not verify "
                            f"(event {report.bad_seq}: {report.problem})")
    events = store.events(run_id, types={"run_started"})
    if not events:
        raise TraceUnusable(f"cannot {purpose} run {run_id}: it has no run_started event")
    return events[0]


class _Coverage:
    """Which finished node executions the checkpoint a run resumes from holds: those that
    finished before its TRACE_SEQ_KEY, and, after it, the first `with_writes[name]` of a
    node that LangGraph kept the writes of (pending writes: those tasks do not run again).
    Every other execution runs again, so its calls must stay in the cache for it."""

    def __init__(self, trace_seq: int, with_writes: Counter):
        self.trace_seq, self.with_writes, self._used = trace_seq, with_writes, Counter()

    def holds(self, node_finished: dict[str, Any]) -> bool:
        if node_finished["seq"] < self.trace_seq:
            return True
        name = node_finished["node"]
        if self._used[name] < self.with_writes[name]:
            self._used[name] += 1
            return True
        return False


async def _coverage(saver: TraceFirstSaver, graph: str, params: dict[str, Any], config: dict[str, Any],
                    checkpoint: Any) -> _Coverage | None:
    """The coverage of `checkpoint` (None for one written without TRACE_SEQ_KEY: then every
    finished execution is taken as held, as before the key existed)."""
    trace_seq = (checkpoint.metadata or {}).get(TRACE_SEQ_KEY)
    if trace_seq is None:
        return None
    snapshot = await compiled_graph(graph, params, saver).aget_state(config)
    return _Coverage(trace_seq, Counter(t.name for t in snapshot.tasks if t.result is not None and t.error is None))


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


def _restore(ctx: RunContext, store: TraceStore, run_id: str,
             coverage: _Coverage | None = None) -> tuple[int, list[int]]:
    """Put back what the run had spent and counted, and which identical requests it had
    made in steps the checkpoint holds (a step that runs again finds its calls in the
    cache: one that did not finish, and one that finished after the checkpoint it resumes
    from was written). Returns the number of recorded model calls and the node executions
    that will run again (by node_started seq; see RunResumed.superseded)."""
    events = store.events(run_id)
    owner = executions(events)
    before = superseded(events)
    again: list[int] = []
    started: set[int] = set()
    for event in events:
        start = owner.get(event["seq"])
        if event["type"] == "node_started":
            started.add(event["seq"])
        elif event["type"] == "node_finished" and start is not None:
            started.discard(start)
            if start not in before and not (event["outcome"] == "ok" and (coverage is None or coverage.holds(event))):
                again.append(start)
    again += sorted(started - before)  # interrupted inside: runs again
    dropped = before | set(again)
    calls = 0
    for event in events:
        kind = event["type"]
        start = owner.get(event["seq"])
        counted = start not in dropped
        if kind == "llm_call":
            calls += 1
            if start is not None and counted:  # a call of a step the checkpoint holds: not met again
                ctx.occurrences[event["call_key"]] += 1
            if event["source"] == "backend":  # paid, whichever step it was in
                ctx.model_calls += event["requests"]
                ctx.budget.charge(event["prompt_tokens"] + event["completion_tokens"])
                ctx.usage = ctx.usage + Usage(prompt_tokens=event["prompt_tokens"],
                                              cached_prompt_tokens=event["cached_prompt_tokens"],
                                              completion_tokens=event["completion_tokens"])
                ctx.cost_usd += event["cost_usd"] or 0.0
            else:
                ctx.cache_hits += 1
        elif kind == "fallback" and counted:  # a rerun step records its own fallbacks again
            ctx.fallbacks[event["kind"]] += 1
        elif kind == "retry":
            ctx.retries += 1
    return calls, sorted(again)


async def resume(run_id: str, *, config: Config | None = None, models: dict[str, Model] | None = None,
                 store: TraceStore | None = None, checkpoint_path: Path | None = None,
                 force: bool = False) -> RunResult:
    """Continue an interrupted run from its last checkpoint.

    Finished steps are not run again (checkpoint); model calls that finished inside the
    step that was interrupted are served from the run's own trace (replay cache). A run
    stopped before its first checkpoint (no node had started) starts again from its
    recorded input under the same id. A run still owned by a live process on this host
    is refused unless `force`.
    """
    store = store or default_store()
    run_id = store.find_run(run_id)
    row = store.run(run_id)
    if row["status"] == "finished":  # type: ignore[index]
        raise RunNotResumable(f"run {run_id} finished; there is nothing to resume (replay it instead)")
    if row["replay_of"]:  # type: ignore[index]
        raise RunNotResumable(f"run {run_id} is a replay; replay {row['replay_of']} again instead")  # type: ignore[index]
    started = _recorded(store, run_id, "resume")
    async with _saver(_checkpoint_path(checkpoint_path)) as saver:
        thread = {"configurable": {"thread_id": run_id}}
        latest = await saver.aget_tuple(thread)
        checkpointed = latest is not None
        coverage = await _coverage(saver, started["graph"], started["params"], thread, latest) if latest else None
    if coverage is not None and store.last_link(run_id)[0] < coverage.trace_seq:
        raise TraceUnusable(f"cannot resume run {run_id}: its checkpoint was written when its trace reached event "
                            f"{coverage.trace_seq - 1}, but the trace now ends at event "
                            f"{store.last_link(run_id)[0] - 1} (events were lost: a damaged store?)")
    if not checkpointed and store.events(run_id, types={"node_started", "run_finished"}):
        raise RunNotResumable(f"run {run_id} has no checkpoint to resume from "
                              "(it ran without one, or its checkpoint file is gone)")
    if not store.claim_run(run_id, row["owner"], _owner(), force=force):  # type: ignore[index]
        raise RunNotResumable(f"run {run_id} is still running in process {row['owner']}; "  # type: ignore[index]
                              "pass force=True (--force) if that process is gone")
    config = config or load_config()
    roles = started["roles"]
    built = _build_models(config, sorted(set(roles.values()) | set(started["models"])), models)
    ctx = RunContext(run_id=run_id, models=built, roles=roles, writer=TraceWriter(store, run_id),
                     budget=Budget(**{f"max_{k}": v for k, v in started["budget"].items()}),
                     cache=ReplayCache.from_trace(store, run_id), config=config, charge_cache_hits=False)
    recorded, again = _restore(ctx, store, run_id, coverage)
    ctx.emit(RunResumed(recorded_calls=recorded, from_checkpoint=checkpointed, superseded=again))
    try:
        return await _execute(ctx, started["graph"], None if checkpointed else started["input"], started["params"],
                              checkpoint=True, checkpoint_path=checkpoint_path)
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


def _recorded_prices(models: dict[str, dict[str, Any]], roles: dict[str, str]) -> Config:
    """The recorded models' prices, so a replay reports (and decides on) the same cost."""
    specs = {name: ModelSpec(price_input_per_mtok=entry.get("price_input_per_mtok"),
                             price_output_per_mtok=entry.get("price_output_per_mtok"))
             for name, entry in models.items()}
    return Config(models=specs or {"local": ModelSpec()}, roles=roles)


class ReplayResult(RunResult):
    replay_of: str
    decisions_match: bool
    answer_matches: bool


def decisions(store: TraceStore, run_id: str) -> list[dict[str, Any]]:
    """The run's decision events without run-specific fields, for comparing runs; those of
    node executions a resume ran again (superseded) are left out, their rerun's kept."""
    volatile = {"run_id", "seq", "ts", "elapsed_s", "elapsed_ms"}
    events = store.events(run_id)
    owner, dropped = executions(events), superseded(events)
    return [{k: v for k, v in event.items() if k not in volatile} for event in events
            if event["type"] in DECISION_TYPES and owner.get(event["seq"]) not in dropped]


async def replay(run_id: str, *, store: TraceStore | None = None) -> ReplayResult:
    """Re-run a recorded run from its trace alone: no model is called.

    The replay is itself a run (with `replay_of` set) whose decisions are compared with
    the original's. Its budget is the original's less wall time, which no replay
    reproduces: where the original was refused for time, the replay is refused alike.
    """
    store = store or default_store()
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
                     config=_recorded_prices(started["models"], roles))
    ctx.emit(RunStarted(graph=started["graph"], input=started["input"], params=started["params"],
                        roles=roles, models=started["models"], budget=started["budget"],
                        replay_of=original, version=__version__))
    result = await _execute(ctx, started["graph"], started["input"], started["params"], checkpoint=False,
                            checkpoint_path=None)
    finished = store.events(original, types={"run_finished"})
    original_answer = finished[-1]["answer"] if finished else None
    return ReplayResult(**result.model_dump(), replay_of=original,
                        decisions_match=decisions(store, original) == decisions(store, new_id),
                        answer_matches=original_answer == result.answer)


__all__ = ["RunResult", "RunFailed", "RunNotResumable", "TraceUnusable", "run", "resume", "replay",
           "decisions", "ConfigError"]
