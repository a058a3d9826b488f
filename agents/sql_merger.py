"""Merge-revise (CSC-SQL): read the two most-voted queries with their results and write
the final one, which is itself executed and checked before it is accepted.

Two forms (param `merge_mode`):

- "vote" (the default; CSC-SQL's released code): `merge_n` revisions (8) sampled at
  `merge_temperature` (0.8), each executed; the revisions vote by execution result (failed
  ones get no vote) and the most-voted result's first revision is the answer. A tie between
  revision groups goes to the group that returns what query A (the vote winner) returned,
  then what B returned, then to the earliest revision.
- "single": one revision at temperature 0.

When every revision fails, the vote winner stands (a recorded `merge_failed` fallback).
"""

from __future__ import annotations

from typing import Any

import sqlglot
from langgraph.runtime import Runtime
from sqlglot import exp
from sqlglot.errors import SqlglotError

from refinegraph.agents.sql_executor import open_database, record
from refinegraph.agents.sql_writer import evidence_line
from refinegraph.context import RunContext
from refinegraph.events import Merge
from refinegraph.prompts import load_prompt
from refinegraph.tools.sql import ExecResult, SqlVote, VoteGroup, result_key, serialize_schema, vote_on_results
from refinegraph.tools.sql.extract import extract_sql


def tables_of(*queries: str, dialect: str) -> list[str] | None:
    """The tables the queries read (the merge prompt's schema is pruned to them), or None
    when a query cannot be parsed (then the whole schema is shown)."""
    names: set[str] = set()
    for sql in queries:
        try:
            tree = sqlglot.parse_one(sql, read=dialect)
        except SqlglotError:
            return None
        names |= {table.name for table in tree.find_all(exp.Table) if table.name}
    return sorted(names) or None


def merge_winner(outcome: SqlVote, prefer: list[str | None]) -> VoteGroup | None:
    """The most-voted revision group; among tied groups, the one whose result is first in
    `prefer` (A's key, then B's), else the earliest."""
    if not outcome.groups:
        return None
    top = [g for g in outcome.groups if g.votes == outcome.groups[0].votes]
    for key in prefer:
        for group in top:
            if key is not None and group.key == key:
                return group
    return top[0]


async def merge_revise(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    params = state["params"]
    vote = state["vote"]
    first, second = vote["groups"][0], vote["groups"][1]
    a, b = state["candidates"][first["members"][0]], state["candidates"][second["members"][0]]
    db = open_database(state, runtime)
    schema = serialize_schema(db, tables=tables_of(a["sql"], b["sql"], dialect=db.dialect),
                              samples=params["schema_samples"]) or state["schema"]
    messages = load_prompt("sql_merger").render(
        schema=schema, question=state["question"], evidence=evidence_line(state), dialect=state["dialect"],
        sql_a=a["sql"], result_a=a["preview"], votes_a=first["votes"],
        sql_b=b["sql"], result_b=b["preview"], votes_b=second["votes"], total=len(state["candidates"]))
    voting = params.get("merge_mode", "single") == "vote"
    n = params["merge_n"] if voting else 1
    temperature = params["merge_temperature"] if voting else 0.0
    samples = await ctx.sample("merger", messages, n=n, temperature=temperature, max_tokens=params["max_tokens"],
                               seed=params["seed"])
    executed: dict[str, ExecResult] = {}
    results: list[ExecResult] = []
    for text in samples.texts:
        sql = extract_sql(text)
        if sql not in executed:  # the same revision runs once (the trace: one sql_exec each)
            executed[sql] = await db.execute(sql)
            record(runtime, len(state["candidates"]) + len(results), executed[sql])
        results.append(executed[sql])
    outcome = vote_on_results(results)
    chosen = merge_winner(outcome, [a["key"], b["key"]])
    inputs = [{"sql": a["sql"], "key": a["key"], "votes": first["votes"]},
              {"sql": b["sql"], "key": b["key"], "votes": second["votes"]}]
    shared = {"mode": "vote" if voting else "single", "temperature": temperature,
              "revisions": [{"sql": r.sql, "key": result_key(r.rows) if r.ok else None,
                             "error_class": r.error_class} for r in results],
              "groups": [{"key": g.key, "members": g.members, "votes": g.votes} for g in outcome.groups]}
    if chosen is not None:
        merged_sql = results[chosen.members[0]].sql
        ctx.emit(Merge(inputs=inputs, output_sql=merged_sql, output_key=chosen.key, accepted=True, **shared))
        return {"sql": merged_sql}
    last = results[-1]
    reason = (f"the merged SQL failed ({last.error_class}): {last.error}" if len(results) == 1
              else f"all {len(results)} merged SQL failed; the last ({last.error_class}): {last.error}")
    ctx.emit(Merge(inputs=inputs, output_sql=last.sql, accepted=False, reason=reason[:1000], **shared))
    ctx.fallback("merge_failed", reason + "; the vote winner stands", last.sql)
    return {"sql": a["sql"]}
