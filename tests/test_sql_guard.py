"""The guard alone (refinegraph.tools.sql.guard), without a database: what it refuses itself.

tests/test_sql_hostile.py accepts any error class on DuckDB, where `enable_external_access=false`
would also stop a file read; these tests hold the guard to refusing DuckDB's file, URL and
SQL-as-text table functions itself, with a reason that names what it refused.
"""

from __future__ import annotations

import pytest

from benchmarks.hostile_sql import DUCKDB, LEGIT, RUNAWAY, hostile_statements
from refinegraph.tools.sql.guard import DUCKDB_TABLE_FUNCTIONS, RejectedSQL, check_read_only


def _filled(sql: str) -> str:
    return sql.replace("{out}", "/tmp/out").replace("{sqlite}", "/tmp/db.sqlite").replace("{schema}", "s")


@pytest.mark.parametrize("name, sql", DUCKDB, ids=[name for name, _ in DUCKDB])
def test_guard_refuses_every_duckdb_hostile_statement(name, sql):
    with pytest.raises(RejectedSQL):
        check_read_only(_filled(sql), "duckdb")


def test_guard_refuses_the_common_statements_on_duckdb():
    passed = []
    for name, sql in hostile_statements("duckdb"):
        try:
            check_read_only(_filled(sql), "duckdb")
        except RejectedSQL:
            continue
        passed.append(name)
    assert passed == []


@pytest.mark.parametrize("sql, function", [
    ("SELECT * FROM parquet_scan('/tmp/x.parquet')", "parquet_scan"),
    ("SELECT * FROM sniff_csv('/etc/passwd')", "sniff_csv"),
    ("SELECT * FROM read_ndjson('/etc/passwd')", "read_ndjson"),
    ("SELECT * FROM read_json_objects('/etc/passwd')", "read_json_objects"),
    ("SELECT * FROM parquet_metadata('/tmp/x.parquet')", "parquet_metadata"),
    ("SELECT * FROM read_xlsx('/tmp/x.xlsx')", "read_xlsx"),
    ("SELECT * FROM json_execute_serialized_sql('x')", "json_execute_serialized_sql"),
    ("SELECT * FROM query('DELETE FROM singer RETURNING *')", "query"),
    ("SELECT * FROM main.query_table('singer')", "query_table"),
    ("SELECT * FROM singer CROSS JOIN LATERAL read_csv('/etc/passwd')", "read_csv"),
    ("SELECT * FROM singer WHERE EXISTS (FROM glob('/etc/*'))", "glob"),
    ("SELECT COUNT(*) FROM range(3) UNION ALL SELECT COUNT(*) FROM duckdb_secrets()", "duckdb_secrets"),
])
def test_duckdb_table_function_outside_the_allowlist_is_named(sql, function):
    with pytest.raises(RejectedSQL, match=f"function {function} is not allowed"):
        check_read_only(sql, "duckdb")


@pytest.mark.parametrize("sql", [
    "FROM '/etc/passwd'",
    "SELECT * FROM singer, 'https://example.com/x.csv' AS x",
    'SELECT * FROM "/etc/passwd"',
    'SELECT * FROM "singer.parquet"',
    "SELECT * FROM singer.csv",
])
def test_duckdb_file_as_a_table_is_refused(sql):
    with pytest.raises(RejectedSQL, match="DuckDB reads"):
        check_read_only(sql, "duckdb")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM range(3)",
    "SELECT * FROM generate_series(1, 3) AS g(n)",
    "SELECT * FROM unnest([1, 2]) AS u(x)",
    "SELECT s.Name FROM singer AS s, range(2) AS r(i) WHERE r.i = 0",
    "SELECT * FROM main.singer",
    "SELECT * FROM singer JOIN stadium ON starts_with(singer.Name, stadium.Name)",
    *[sql for _, sql, _ in LEGIT],
    *[sql for _, sql in RUNAWAY["duckdb"]],
])
def test_duckdb_reads_still_pass(sql):
    check_read_only(sql, "duckdb")


@pytest.mark.parametrize("dialect, sql", [
    ("sqlite", "SELECT * FROM json_each('[1, 2]')"),
    ("sqlite", "SELECT * FROM pragma_table_info('singer')"),
    ("postgres", "SELECT * FROM generate_series(1, 3)"),
    ("postgres", "SELECT * FROM json_each('{\"a\": 1}')"),
])
def test_other_dialects_keep_their_table_functions(dialect, sql):
    check_read_only(sql, dialect)


def test_allowlist_is_small():
    assert DUCKDB_TABLE_FUNCTIONS == {"range", "generate_series", "unnest"}
