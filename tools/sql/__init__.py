"""Executing model-written SQL safely, describing schemas for prompts, comparing results.

    db = connect("path/to/db.sqlite")               # or postgresql://..., duckdb:///...
    result = await db.execute("SELECT ...")         # never raises for bad SQL: see result.error_class
    results_match(result.rows, gold.rows, ordered=orders_rows(gold_sql))
"""

from refinegraph.tools.sql.compare import orders_rows, render_result, result_key, results_match
from refinegraph.tools.sql.engines import Database, ExecResult, connect
from refinegraph.tools.sql.guard import RejectedSQL, check_read_only
from refinegraph.tools.sql.schema import serialize_schema
from refinegraph.tools.sql.vote import SqlVote, VoteGroup, vote_on_results

__all__ = ["Database", "ExecResult", "RejectedSQL", "check_read_only", "connect", "orders_rows",
           "render_result", "result_key", "results_match", "serialize_schema", "SqlVote", "VoteGroup",
           "vote_on_results"]
