"""Human approval of text-to-SQL: start a run that waits, see what waits, decide, continue.

    result = await approval.start("sql-greedy", {"question": q, "db": url})
    waiting = approval.pending(result)              # PendingApproval(run_id, sql, question) or None
    result = await approval.decide(result.run_id, Decision(decision="approve", by="ana"))

The graph pauses with LangGraph's `interrupt()` (refinegraph.human), so these runs always
use the checkpointer. While it waits the run is listed as "awaiting_approval" with no owner;
`decide` claims it (one decision wins, atomically), rebuilds its context from the trace
and continues the graph with `Command(resume=decision)`. The decision and who made it is an
`approval` event; the run's trace is then sealed as any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langgraph.types import Command
from pydantic import BaseModel, ValidationError

from refinegraph.budget import Budget
from refinegraph.cache import ReplayCache
from refinegraph.config import Config, ConfigError, load_config
from refinegraph.context import RunContext
from refinegraph.human import AWAITING_APPROVAL, Decision
from refinegraph.models import Model
from refinegraph.runs.execute import RunResult, _build_models, _close, _execute, _owner, _recorded
from refinegraph.runs.resume import _restore
from refinegraph.runs.start import run
from refinegraph.runs.stores import shared_store
from refinegraph.trace.store import BaseTraceStore, Batch, TraceWriter

__all__ = ["AWAITING_APPROVAL", "Decision", "DecisionRefused", "NotAwaitingApproval", "PendingApproval", "decide",
           "pending", "pending_run", "start"]


class NotAwaitingApproval(ValueError):
    """The run is not waiting for an approval (finished, running, or decided by someone else)."""


class DecisionRefused(ValueError):
    """The decision itself is malformed (an edit without SQL, an unknown decision)."""


class PendingApproval(BaseModel):
    """What a person is asked to approve."""

    run_id: str
    status: str = AWAITING_APPROVAL
    sql: str
    question: str = ""


async def start(graph: str, task: str | dict[str, Any], *, params: dict[str, Any] | None = None,
                **kwargs: Any) -> RunResult:
    """refinegraph.run with approve=True and the checkpointer on; returns when the run waits
    (stop_reason "awaiting_approval", see `pending`) or has ended without anything to approve."""
    kwargs["checkpoint"] = True
    return await run(graph, task, params={**(params or {}), "approve": True}, **kwargs)


def pending(result: RunResult) -> PendingApproval | None:
    """The approval `result` waits for, else None."""
    interrupts = result.state.get("__interrupt__") or []
    if result.stop_reason != AWAITING_APPROVAL or not interrupts:
        return None
    value = interrupts[0].value
    return PendingApproval(run_id=result.run_id, sql=value["sql"], question=value.get("question", ""))


def pending_run(run_id: str, *, store: BaseTraceStore | None = None) -> PendingApproval:
    """The approval a recorded run waits for, read from its trace (its last `approval`
    request), for a decision made later or elsewhere (the server, `refinegraph approve`)."""
    store = store or shared_store()
    run_id = store.find_run(run_id)
    row = store.run(run_id)
    if row is None or row["status"] != AWAITING_APPROVAL:
        raise NotAwaitingApproval(f"run {run_id} is not awaiting approval (status: "
                                  f"{row['status'] if row else 'unknown'})")
    requests = [e for e in store.events(run_id, types={"approval"}) if e["phase"] == "requested"]
    started = store.events(run_id, types={"run_started"})
    question = started[0]["input"].get("question", "") if started else ""
    if not requests:
        raise NotAwaitingApproval(f"run {run_id} is listed as awaiting approval but its trace holds no request")
    return PendingApproval(run_id=run_id, sql=requests[-1]["sql"], question=question)


def as_decision(decision: Decision | dict[str, Any]) -> Decision:
    """A Decision, or DecisionRefused naming what is wrong with it."""
    if isinstance(decision, Decision):
        return decision
    try:
        return Decision.model_validate(decision)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'decision'}: {e['msg']}" for e in exc.errors())
        raise DecisionRefused(f"bad decision: {problems}") from None


async def decide(run_id: str, decision: Decision | dict[str, Any], *, config: Config | None = None,
                 models: dict[str, Model] | None = None, store: BaseTraceStore | None = None,
                 checkpoint_path: Path | None = None) -> RunResult:
    """Continue a run that waits for approval with `decision`, to its end.

    A malformed decision (DecisionRefused) or a run that is not waiting (NotAwaitingApproval)
    changes nothing: the run keeps waiting. Of two concurrent decisions one wins; the
    other gets NotAwaitingApproval."""
    choice = as_decision(decision)
    store = store or shared_store()
    run_id = store.find_run(run_id)
    pending_run(run_id, store=store)
    if not store.claim_run(run_id, None, _owner()):
        raise NotAwaitingApproval(f"run {run_id} is being decided by another request")
    try:
        started = _recorded(store, run_id, "approve")
        config = config or load_config()
        roles = started["roles"]
        built = _build_models(config, sorted(set(roles.values()) | set(started["models"])), models)
    except (ConfigError, ValueError):
        _release(store, run_id)  # nothing ran: it still waits
        raise
    ctx = RunContext(run_id=run_id, models=built, roles=roles, writer=TraceWriter(store, run_id),
                     budget=Budget(**{f"max_{k}": v for k, v in started["budget"].items()}),
                     cache=ReplayCache.from_trace(store, run_id), config=config, charge_cache_hits=False)
    _restore(ctx, store, run_id)
    try:
        return await _execute(ctx, started["graph"], Command(resume=choice.model_dump()), started["params"],
                              checkpoint=True, checkpoint_path=checkpoint_path)
    finally:
        await _close(built, models)


def _release(store: BaseTraceStore, run_id: str) -> None:
    store.commit(Batch(listings=[{"run_id": run_id, "status": AWAITING_APPROVAL, "owner": None}]))
