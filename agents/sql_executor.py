"""SQL executor: runs each candidate read-only and records what the database said."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from refinegraph.context import RunContext
from refinegraph.events import SqlExec
from refinegraph.tools.sql import Database, ExecResult, connect, render_result, result_key

SQL_RECORD_CHARS = 4000
"""How much of a statement an sql_exec event keeps (checks of the trace compare against the same cut)."""


def open_database(state: dict[str, Any], runtime: Runtime[RunContext],
                  params: dict[str, Any] | None = None) -> Database:
    """The run's database under the config's [sql] limits: the graph's params (a request's,
    through serve) may lower timeout_s and max_rows, never raise them past the config."""
    limits = runtime.context.config.sql
    params = state.get("params") or params or {}
    return connect(state["db"], timeout_s=min(params.get("timeout_s", limits.timeout_s), limits.timeout_s),
                   max_rows=min(params.get("max_rows", limits.max_rows), limits.max_rows),
                   max_bytes=limits.max_bytes, memory_mb=limits.memory_mb,
                   allow_privileged_role=limits.allow_privileged_postgres_role)


def summary(index: int, result: ExecResult, render_rows: int = 10, render_chars: int = 800) -> dict[str, Any]:
    """What the state keeps of a result: its key and a short rendering, not its rows."""
    return {"sql": result.sql, "key": result_key(result.rows) if result.ok else None,
            "error_class": result.error_class, "error": result.error, "row_count": len(result.rows),
            "preview": render_result(result.columns, result.rows, max_rows=render_rows, max_chars=render_chars)
            if result.ok else f"error ({result.error_class}): {result.error}"}


def record(runtime: Runtime[RunContext], index: int, result: ExecResult) -> None:
    runtime.context.emit(SqlExec(candidate=index, sql=result.sql[:SQL_RECORD_CHARS],
                                 result_key=result_key(result.rows) if result.ok else None,
                                 rows=len(result.rows), truncated=result.truncated,
                                 error_class=result.error_class, error=(result.error or None) and result.error[:1000],
                                 elapsed_ms=result.elapsed_ms))


async def execute_candidates(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Every candidate on the database; a failed one is a result with its error class."""
    db = open_database(state, runtime)
    executed = []
    for index, candidate in enumerate(state["candidates"]):
        result = await db.execute(candidate["sql"])
        record(runtime, index, result)
        executed.append(summary(index, result))
    return {"candidates": executed}
