"""Finishing an interrupted run from its trace: the graph runs again from the recorded input,
every model call that had finished served from the trace (not paid twice)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from refinegraph.budget import Budget
from refinegraph.cache import ReplayCache
from refinegraph.config import Config, load_config
from refinegraph.context import RunContext
from refinegraph.events import Event, RunResumed
from refinegraph.models import Model
from refinegraph.models.base import Usage
from refinegraph.runs.execute import (
    RunNotResumable,
    RunResult,
    _build_models,
    _close,
    _conversation,
    _execute,
    _owner,
    _recorded,
    _tools,
)
from refinegraph.runs.stores import shared_store
from refinegraph.trace.store import BaseTraceStore, TraceWriter


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
                 store: BaseTraceStore | None = None, force: bool = False,
                 on_event: Callable[[Event], None] | None = None) -> RunResult:
    """Finish an interrupted run from its trace (`on_event`: as for run).

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
                         conversation=_conversation(store, started), on_event=on_event,
                         tools=_tools(store, started))
        recorded, again = _restore(ctx, store, run_id)
        ctx.emit(RunResumed(recorded_calls=recorded, from_checkpoint=False, superseded=again))
        await ctx.writer.commit()
        return await _execute(ctx, started["graph"], started["input"], started["params"],
                              checkpoint=False, checkpoint_path=None)
    finally:
        await _close(built, models)
