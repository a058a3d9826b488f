"""SQL repair: a candidate that failed to execute goes back to the writer with the
database's error and the statement, for up to `max_repairs` rounds, before it counts as
failed (the execution feedback of DIN-SQL and MAC-SQL).

The prompt lists, under the error, the tables the failed query names with their real
columns (tools.sql.query_tables_hint): the full schema is there too, but a small model
repeats `T2.MakeId` until the one table's columns are in front of it. A round that writes
back a statement it already tried is a fixed point at temperature 0: the next round samples
at `REPEAT_TEMPERATURE` instead (recorded in the `repair` event and counted as the
`repair_repeated` fallback).

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
from refinegraph.tools.sql.schema import query_tables_hint

ERROR_CHARS = 1000
"""How much of the database's error the prompt and the event keep."""
REPEAT_TEMPERATURE = 0.7
"""The temperature of a round after one that wrote back a statement already tried."""


def _normalized(sql: str) -> str:
    return " ".join(sql.split()).rstrip(";").lower()


async def repair_sql(runtime: Runtime[RunContext], state: dict[str, Any], candidate: dict[str, Any], index: int,
                     shared: list[int], db: Any) -> tuple[dict[str, Any], int]:
    """Up to max_repairs rounds on one failed candidate; (its last summary, rounds used)."""
    ctx = runtime.context
    params = state["params"]
    current = candidate
    rounds = 0
    tried = {_normalized(current["sql"])}
    temperature = 0.0
    while current["error_class"] and rounds < params["max_repairs"]:
        rounds += 1
        error = (current["error"] or "")[:ERROR_CHARS]
        tables = query_tables_hint(db, current["sql"])
        hint = f"\nThe tables this query names, with their columns:\n{tables}\n" if tables else ""
        messages = load_prompt("sql_repair").render(
            schema=state["schema"], question=state["question"], evidence=evidence_line(state),
            dialect=state["dialect"], sql=current["sql"], error_class=current["error_class"], error=error, hint=hint)
        samples = await ctx.sample("solver", messages, temperature=temperature, max_tokens=params["max_tokens"],
                                   seed=params["seed"] + rounds)
        repaired = extract_sql(samples.texts[0])
        repeated = _normalized(repaired) in tried
        tried.add(_normalized(repaired))
        result = await db.execute(repaired)
        record(runtime, index, result)
        record_as = summary(index, result)
        ctx.emit(Repair(candidate=index, candidates=shared, round=rounds, failed_sql=current["sql"][:SQL_RECORD_CHARS],
                        failed_error_class=current["error_class"], failed_error=error,
                        repaired_sql=repaired[:SQL_RECORD_CHARS], error_class=result.error_class,
                        error=(result.error or None) and result.error[:ERROR_CHARS], result_key=record_as["key"],
                        temperature=temperature, repeated=repeated))
        if repeated and result.error_class:
            ctx.fallback("repair_repeated", "the repair wrote back a statement already tried",
                         f"round {rounds}: the next round samples at temperature {REPEAT_TEMPERATURE}")
            temperature = REPEAT_TEMPERATURE
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
