"""Text-to-SQL: greedy, self-consistency by execution result, and CSC-SQL merge-revise.

- sql-greedy: one query at temperature 0, executed.
- sql-sc: n candidates executed; a vote over the sets of rows they return (failed
  candidates get no vote; ties go to the earliest candidate's group); the winner's SQL.
- csc-sql: as sql-sc, then, when the vote is not unanimous, a merge-revise step reads the
  two most-voted queries with their (truncated) results and writes the final query. Ties
  are merged too (the paper's code skips them and, on a tie, picks one group twice). By
  default as CSC-SQL's released code: `merge_n` (8) revisions at `merge_temperature` (0.8),
  executed and voted on by result; `merge_mode="single"` writes one at temperature 0. The
  merged query is executed; if every revision fails, the vote winner stands (a recorded
  fallback). See refinegraph.agents.sql_merger.
- sql-repair: sql-greedy with repair on: a query that fails to execute goes back to the
  writer with the database's error, up to `max_repairs` rounds. `repair=True` does the same
  for every failed candidate of sql-sc and csc-sql, before the vote (agents.sql_repairer).

Input: {"question": str, "db": URL or path, "evidence": optional str}. Output adds
sql, columns, rows (capped), answer (a rendered table) and stop_reason. When every
candidate fails (refused, broken, timed out, over a limit), the run stops with
"no_valid_sql", a recorded fallback, and returns no SQL, no rows and no answer: `sql` is
None, `refused_sql` the first candidate's statement and `error` its error.

Approval (`approve=True`, see docs/sql.md): before the chosen SQL runs for its answer, the
graph shows it to a person and waits (LangGraph's `interrupt()`, so the run needs a
checkpointer; refinegraph.approval runs and continues it). sql-greedy then writes its one
query and runs nothing before the decision; sql-sc and csc-sql still execute their
candidates, read-only and guarded, because their vote is over execution results. Approved:
the SQL runs (node run_approved, an sql_exec event; if it fails there the run ends as
"no_valid_sql"). Edited: the edit passes the SQL guard, then runs the same way; an edit the
guard refuses ends the run ("edit_refused"). Refused: nothing runs ("refused_by_human"). Both endings
return sql None, the statement in refused_sql and the reason in error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from refinegraph.agents.sql_executor import execute_candidates, open_database
from refinegraph.agents.sql_merger import merge_revise
from refinegraph.agents.sql_repairer import repair_candidates
from refinegraph.agents.sql_writer import write_sql
from refinegraph.context import RunContext
from refinegraph.events import Approval, Stop, Vote
from refinegraph.human import AWAITING_APPROVAL, ask
from refinegraph.registry import register_graph
from refinegraph.tools.sql import (
    RejectedSQL,
    check_read_only,
    connect,
    render_result,
    serialize_schema,
)
from refinegraph.tools.voting import majority_vote
from refinegraph.wiring import MethodGraph

DIALECT_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL", "duckdb": "DuckDB"}


class SqlParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(8, ge=1, le=128)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    seed: int = 0
    max_tokens: int = Field(256, ge=16)
    timeout_s: float = Field(5.0, gt=0)
    max_rows: int = Field(1000, ge=1)
    schema_samples: int = Field(3, ge=0, le=10)
    approve: bool = False
    """Wait for a person's approval of the chosen SQL before it runs (needs a checkpointer)."""
    repair: bool = False
    """Send each failed candidate back to the writer with the database's error before the vote."""
    max_repairs: int = Field(2, ge=0, le=10)
    merge_mode: Literal["vote", "single"] = "vote"
    """csc-sql: "vote" samples merge_n revisions and votes by result (the released code); "single": one at 0."""
    merge_n: int = Field(8, ge=1, le=64)
    merge_temperature: float = Field(0.8, ge=0.0, le=2.0)


class SqlState(TypedDict, total=False):
    question: str
    db: str
    evidence: str
    params: dict[str, Any]
    schema: str
    dialect: str
    candidates: Annotated[list[dict[str, Any]], lambda old, new: new]
    vote: dict[str, Any]
    sql: str | None
    refused_sql: str | None
    error: str | None
    columns: list[str]
    rows: list[list[Any]]
    answer: str | None
    stop_reason: str
    approved_sql: str | None


async def vote(state: SqlState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The one vote (tools.voting) over the candidates' result keys; a failed candidate abstains."""
    candidates = state["candidates"]
    outcome = majority_vote([None if c["error_class"] else c["key"] for c in candidates])
    groups = [{"key": g.key, "members": g.members, "votes": g.votes} for g in outcome.groups]
    runtime.context.emit(Vote(groups=groups, failed=outcome.abstained, winner=outcome.winner.key if groups else None,
                              agreement=round(outcome.agreement, 4), tie=outcome.tied))
    winner = candidates[outcome.winner.members[0]]["sql"] if outcome.winner else None
    update: dict[str, Any] = {"vote": {"groups": groups, "failed": outcome.abstained}}
    if winner is not None:
        update["sql"] = winner
    return update


async def finish(state: SqlState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Run the chosen SQL once more for its rows (read-only, so the same rows) and stop.
    SQL that was refused or failed is never the answer: `sql` is then None, `refused_sql`
    holds the statement and `error` says why."""
    reason = state.get("stop_reason") or "done"
    sql = state.get("sql")
    error = None
    if sql is None:  # every candidate failed, or the budget stopped the writer
        candidates = state.get("candidates", [])
        first = candidates[0] if candidates else {}
        refused = first.get("sql")
        error = (f"{first['error_class']}: {first.get('error')}" if first.get("error_class")
                 else f"no SQL was answered (stop: {reason})")
        if reason == "done":
            reason = "no_valid_sql"
            runtime.context.fallback("no_valid_sql", f"all {len(candidates)} candidates failed (see their "
                                     "sql_exec events); none is returned", refused or "")
        runtime.context.emit(Stop(reason=reason))
        return {"sql": None, "refused_sql": refused, "error": error, "columns": [], "rows": [], "answer": None,
                "stop_reason": reason}
    result = await open_database(state, runtime).execute(sql)
    if not result.ok:  # it ran before; a second run can still time out or hit a limit
        runtime.context.fallback("chosen_sql_failed", f"{result.error_class}: {result.error}", sql)
        runtime.context.emit(Stop(reason="no_valid_sql"))
        return {"sql": None, "refused_sql": sql, "error": f"{result.error_class}: {result.error}", "columns": [],
                "rows": [], "answer": None, "stop_reason": "no_valid_sql"}
    columns, rows = result.columns, [list(r) for r in result.rows]
    answer = render_result(columns, result.rows, max_rows=50, max_chars=4000)
    runtime.context.emit(Stop(reason=reason))
    return {"sql": sql, "columns": columns, "rows": rows, "answer": answer, "stop_reason": reason}


async def request_approval(state: SqlState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Show the chosen SQL (an `approval` event, phase "requested"); nothing chosen, nothing to ask."""
    sql = state.get("sql")
    if sql is not None and not state.get("stop_reason"):
        runtime.context.emit(Approval(phase="requested", sql=sql))
    return {}


async def approval(state: SqlState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Wait for the decision (refinegraph.human.ask), record it, and end the run on a refusal.
    Otherwise the statement that will run becomes the one candidate of `run_approved`, so it
    is executed and recorded (sql_exec) like any candidate, and fails as one would.

    Not wrapped in `traced`: LangGraph runs this node again from its start when the run is
    continued, so its first, paused pass would read as a failed node."""
    sql = state.get("sql")
    if sql is None or state.get("stop_reason"):
        return {}
    ctx = runtime.context
    decision = ask(ctx, {"status": AWAITING_APPROVAL, "sql": sql, "question": state["question"]})
    event = Approval(node="approval", phase="decided", sql=sql, decision=decision.decision, by=decision.by,
                     via=decision.via, edited_sql=decision.sql, accepted=decision.decision != "refuse")
    if decision.decision == "edit":
        problem = _guard_problem(decision.sql or "", state["db"])
        if problem:
            event.accepted, event.reason = False, f"the SQL guard refused the edit: {problem}"
    elif decision.decision == "refuse":
        event.reason = "refused by a person"
    ctx.emit(event)
    if not event.accepted:
        reason = "edit_refused" if decision.decision == "edit" else "refused_by_human"
        ctx.emit(Stop(node="approval", reason=reason))
        return {"sql": None, "refused_sql": decision.sql if decision.decision == "edit" else sql,
                "error": event.reason, "columns": [], "rows": [], "answer": None, "stop_reason": reason}
    final = decision.sql if decision.decision == "edit" else sql
    return {"sql": None, "approved_sql": final, "candidates": [{"sql": final}]}


def _route_after_approval(state: SqlState) -> str:
    """Refused: the end. Approved: run it. Nothing to approve (every candidate failed, the
    budget stopped the writer): finish says so."""
    if state.get("refused_sql"):
        return END
    return "run_approved" if state.get("approved_sql") else "finish"


def _guard_problem(sql: str, db: str) -> str | None:
    """Why the guard refuses `sql` on this database, else None."""
    try:
        check_read_only(sql, connect(db).dialect)
    except RejectedSQL as exc:
        return str(exc)
    except (RecursionError, ValueError) as exc:  # a guard that fails is a refusal, never a crash
        return f"{type(exc).__name__}: {exc}"
    return None


def _route_after_vote(merge: bool, after: str = "finish"):
    def route(state: SqlState) -> str:
        groups = state.get("vote", {}).get("groups", [])
        return "merge" if merge and len(groups) >= 2 and not state.get("stop_reason") else after
    return route


async def _pick_unexecuted(state: SqlState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """sql-greedy awaiting approval: its one query, not yet run."""
    candidates = state.get("candidates", [])
    return {"sql": candidates[0]["sql"]} if candidates and candidates[0]["sql"].strip() else {}


def _build(params: dict[str, Any] | None, *, checkpointer: Any, name: str, vote_on: bool, merge: bool,
           defaults: dict[str, Any]) -> Any:
    settings = SqlParams.model_validate({**defaults, **(params or {})}).model_dump()
    approve = settings["approve"]
    chosen = "request_approval" if approve else "finish"

    async def start(state: SqlState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        db = open_database(state, runtime, settings)
        return {"schema": serialize_schema(db, samples=settings["schema_samples"]), "dialect": DIALECT_NAMES[db.engine]}

    graph = MethodGraph(SqlState, settings, start=start)
    graph.node("writer", write_sql, budget=True)
    graph.node("finish", finish)
    greedy_approval = approve and not vote_on  # its one query waits unexecuted
    graph.unless_stopped("writer", "propose" if greedy_approval else "executor")
    executed = "executor"  # the node after which every candidate has run (repaired, if asked)
    if settings["repair"] and not greedy_approval:
        graph.node("repair", repair_candidates)
        graph.edge("executor", "repair")
        executed = "repair"
    if vote_on:
        graph.node("executor", execute_candidates)
        graph.node("vote", vote)
        graph.edge(executed, "vote")
        graph.branch("vote", _route_after_vote(merge, chosen), [chosen] + (["merge"] if merge else []))
        if merge:
            graph.node("merge", merge_revise, budget=True)
            graph.edge("merge", chosen)
    elif greedy_approval:
        graph.node("propose", _pick_unexecuted)
        graph.edge("propose", chosen)
    else:
        graph.node("executor", execute_candidates)
        graph.node("pick", _pick_first)
        graph.edge(executed, "pick")
        graph.edge("pick", "finish")
    if approve:
        graph.node("request_approval", request_approval)
        graph.node("approval", approval, traced_node=False)
        graph.edge("request_approval", "approval")
        graph.branch("approval", _route_after_approval, ["run_approved", "finish", END])
        # the approved statement, executed as the one candidate, then picked (or failed)
        graph.node("run_approved", execute_candidates)
        graph.node("pick_approved", _pick_first)
        graph.edge("run_approved", "pick_approved")
        graph.edge("pick_approved", "finish")
    return graph.compile(checkpointer, name=name)


async def _pick_first(state: SqlState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    candidate = state["candidates"][0]
    return {"sql": candidate["sql"]} if not candidate["error_class"] else {}


def build_sql_greedy(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    return _build(params, checkpointer=checkpointer, name="sql-greedy", vote_on=False, merge=False,
                  defaults={"n": 1, "temperature": 0.0})


def build_sql_repair(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    return _build(params, checkpointer=checkpointer, name="sql-repair", vote_on=False, merge=False,
                  defaults={"n": 1, "temperature": 0.0, "repair": True})


def build_sql_sc(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    return _build(params, checkpointer=checkpointer, name="sql-sc", vote_on=True, merge=False, defaults={})


def build_csc_sql(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    return _build(params, checkpointer=checkpointer, name="csc-sql", vote_on=True, merge=True, defaults={})


SQL_READS = ("db", "evidence")
SQL_OUTPUTS = ("sql", "columns", "rows")


def register() -> None:
    contract = {"params": SqlParams, "input_key": "question", "reads": SQL_READS, "sets": SQL_OUTPUTS}
    register_graph("sql-greedy", build_sql_greedy, "Text-to-SQL: one query at temperature 0, executed", **contract)
    register_graph("sql-repair", build_sql_repair,
                   "Text-to-SQL: one query at temperature 0; on an execution error, repaired from the error",
                   **contract)
    register_graph("sql-sc", build_sql_sc, "Text-to-SQL: n candidates, vote by execution result", **contract)
    register_graph("csc-sql", build_csc_sql,
                   "Text-to-SQL: CSC-SQL, execution vote then merge-revise of the top two", **contract)


register()
