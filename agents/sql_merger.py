"""Merge-revise (CSC-SQL): read the two most-voted queries with their results and write
the final one, which is itself executed and checked before it is accepted."""

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
from refinegraph.tools.sql import result_key, serialize_schema
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
    samples = await ctx.sample("merger", messages, temperature=0.0, max_tokens=params["max_tokens"],
                               seed=params["seed"])
    merged_sql = extract_sql(samples.texts[0])
    result = await db.execute(merged_sql)
    record(runtime, len(state["candidates"]), result)
    inputs = [{"sql": a["sql"], "key": a["key"], "votes": first["votes"]},
              {"sql": b["sql"], "key": b["key"], "votes": second["votes"]}]
    if result.ok:
        ctx.emit(Merge(inputs=inputs, output_sql=merged_sql, output_key=result_key(result.rows), accepted=True))
        return {"sql": merged_sql}
    reason = f"the merged SQL failed ({result.error_class}): {result.error}"
    ctx.emit(Merge(inputs=inputs, output_sql=merged_sql, accepted=False, reason=reason[:1000]))
    ctx.fallback("merge_failed", reason + "; the vote winner stands", merged_sql)
    return {"sql": a["sql"]}
