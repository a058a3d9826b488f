"""SQL repair: a candidate that failed to execute goes back to the writer with the
database's error and the statement, for up to `max_repairs` rounds, before it counts as
failed (the execution feedback of DIN-SQL and MAC-SQL).

Each distinct failed statement is repaired once and the result shared by every candidate
that had it (same prompt, same call: no reason to pay twice). Repairs run one after another,
candidate order, so a replay makes the same calls in the same order. Each round is a
`repair` event with the error it answered and what the rewrite did on the database.
A budget refusal stops the repairs: what was repaired so far stands, stop_reason "budget".
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from refinegraph.agents.sql_executor import SQL_RECORD_CHARS, record, summary
from refinegraph.agents.sql_writer import evidence_line
from refinegraph.budget import BudgetExceeded
from refinegraph.context import RunContext
from refinegraph.events import Repair
from refinegraph.prompts import load_prompt
from refinegraph.tools.sql import connect
from refinegraph.tools.sql.extract import extract_sql

ERROR_CHARS = 1000
"""How much of the database's error the prompt and the event keep."""


async def repair_sql(runtime: Runtime[RunContext], state: dict[str, Any], candidate: dict[str, Any], index: int,
                     shared: list[int], db: Any) -> tuple[dict[str, Any], int]:
    """Up to max_repairs rounds on one failed candidate; (its last summary, rounds used)."""
    ctx = runtime.context
    params = state["params"]
    current = candidate
    rounds = 0
    while current["error_class"] and rounds < params["max_repairs"]:
        rounds += 1
        error = (current["error"] or "")[:ERROR_CHARS]
        messages = load_prompt("sql_repair").render(
            schema=state["schema"], question=state["question"], evidence=evidence_line(state),
            dialect=state["dialect"], sql=current["sql"], error_class=current["error_class"], error=error)
        samples = await ctx.sample("solver", messages, temperature=0.0, max_tokens=params["max_tokens"],
                                   seed=params["seed"])
        repaired = extract_sql(samples.texts[0])
        result = await db.execute(repaired)
        record(runtime, index, result)
        record_as = summary(index, result)
        ctx.emit(Repair(candidate=index, candidates=shared, round=rounds, failed_sql=current["sql"][:SQL_RECORD_CHARS],
                        failed_error_class=current["error_class"], failed_error=error,
                        repaired_sql=repaired[:SQL_RECORD_CHARS], error_class=result.error_class,
                        error=(result.error or None) and result.error[:ERROR_CHARS], result_key=record_as["key"]))
        current = {**record_as, "repaired_from": candidate["sql"], "repair_rounds": rounds}
    return current, rounds


async def repair_candidates(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Every failed candidate repaired (when params.repair is on); the candidates, updated."""
    params = state["params"]
    candidates = list(state["candidates"])
    if not params.get("repair") or params["max_repairs"] == 0:
        return {}
    db = connect(state["db"], timeout_s=params["timeout_s"], max_rows=params["max_rows"])
    by_sql: dict[str, list[int]] = {}
    for index, candidate in enumerate(candidates):
        if candidate["error_class"]:
            by_sql.setdefault(candidate["sql"], []).append(index)
    for members in by_sql.values():
        first = members[0]
        try:
            repaired, _ = await repair_sql(runtime, state, candidates[first], first, members, db)
        except BudgetExceeded:
            return {"candidates": candidates, "stop_reason": "budget"}
        for index in members:
            candidates[index] = repaired
    return {"candidates": candidates}
