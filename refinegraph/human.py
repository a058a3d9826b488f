"""What a node uses to wait on a person: LangGraph's `interrupt()`, and the decision it returns.

A node calls `ask(ctx, request)`. The first time, LangGraph's `interrupt()` pauses the graph
(its checkpointer keeps the state) and the runner lists the run as `request["status"]`; a
later `Command(resume=decision)` (refinegraph.approval.decide) re-runs the node, and
`interrupt()` returns the decision. A replay asks nobody: it takes the decision the original
run recorded (its `approval` events of phase "decided", in order), so it reaches the same
decisions without a person.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.types import interrupt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from refinegraph.context import ReplayMiss, RunContext

AWAITING_APPROVAL = "awaiting_approval"
"""The run's status (`trace list`) while it waits for an approval."""


class Decision(BaseModel):
    """A person's answer to an approval request: approve, refuse, or edit (with the new SQL)."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "refuse", "edit"]
    sql: str | None = Field(None, max_length=100_000)
    """The edited statement (edit only); it passes the SQL guard before it runs."""
    by: str = Field("unknown", min_length=1, max_length=200)
    """Who decided (a user name, an API client's name): recorded in the trace."""
    via: Literal["cli", "api", "server"] = "api"

    @model_validator(mode="after")
    def _edit_has_sql(self) -> Decision:
        if self.decision == "edit" and not (self.sql or "").strip():
            raise ValueError("an edit needs the edited statement (sql)")
        if self.decision != "edit" and self.sql is not None:
            raise ValueError(f"sql is only for an edit, not for {self.decision!r}")
        return self


def ask(ctx: RunContext, request: dict[str, Any], occurrence: int = 0) -> Decision:
    """Pause for a person's decision on `request` (or, in a replay, the recorded one)."""
    if ctx.replay_only:
        return recorded_decision(ctx, occurrence)
    return Decision.model_validate(interrupt(request))


def recorded_decision(ctx: RunContext, occurrence: int) -> Decision:
    """The original run's `occurrence`-th decision, for a replay of it."""
    store = ctx.writer.store
    row = store.run(ctx.run_id) if store is not None else None
    original = row["replay_of"] if row else None
    decided = [e for e in store.events(original, types={"approval"}) if e["phase"] == "decided"] if original else []
    if occurrence >= len(decided):
        raise ReplayMiss(f"the recorded run has no approval decision #{occurrence} to replay")
    event = decided[occurrence]
    return Decision(decision=event["decision"], sql=event["edited_sql"], by=event["by"] or "unknown",
                    via=event["via"] or "api")
