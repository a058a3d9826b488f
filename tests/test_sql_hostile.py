"""Hostile SQL against refinegraph.tools.sql on SQLite, DuckDB and PostgreSQL.

Every statement here must come back from `Database.execute_sync` as an ExecResult with an
error class and an error text, never as an exception and never as rows; and nothing may be
written: the SQLite and DuckDB files keep their sha256 (and no file appears beside them or in
the scratch folder the statements aim at), and the PostgreSQL schema keeps its relations, row
counts and comments, with no pwned* object anywhere on the server. A few legitimate reads must
still work on each engine, so that the guard is not simply refusing everything.

The databases are copies of Spider's concert_singer: the SQLite file copied into a temporary
folder, a DuckDB file and a PostgreSQL schema of their own built from its tables (the schema is
dropped at the end). PostgreSQL cases skip when REFINEGRAPH_PG_DSN is unset.

In the statements, {out} is a scratch folder (writable by anyone, so a server-side write would
land there and be seen), {schema} the PostgreSQL schema and {sqlite} the SQLite copy. The
statements and the snapshot of "what a write could change" live in benchmarks.hostile_sql,
which `refinegraph bench reliability` runs as well; the engine copies in refinegraph.tools.sql.copies.
"""

from __future__ import annotations

import time

import pytest
from test_sql_engines import copy_spider, pg_dsn

from benchmarks.hostile_sql import (
    ENGINES,
    ERROR_CLASSES,
    LEGIT,
    LIMIT_MAX_BYTES,
    LIMIT_MEMORY_MB,
    LIMIT_TIMEOUT_S,
    RUNAWAY,
    RUNAWAY_MARGIN_MS,
    RUNAWAY_TIMEOUT_S,
    Target,
    drop_leftover_replication_slots,
    fill,
    hostile_statements,
    limit_statements,
    second_line_statements,
)
from refinegraph.tools.sql import ExecResult
from refinegraph.tools.sql.copies import (
    SourceTable,
    build_duckdb,
    build_pg_schema,
    drop_pg_schema,
    pg_schema_url,
    read_sqlite_tables,
    unique_schema,
)

# Each engine's hostile statements: the common ones it does not read as harmless, then its own.
CASES = [pytest.param(engine, sql, id=f"{engine}-{name}") for engine in ENGINES
         for name, sql in hostile_statements(engine)]
LIMIT_CASES = [pytest.param(engine, kind, sql, id=f"{engine}-{kind}-{name}")
               for engine in ENGINES for name, kind, sql in limit_statements(engine)]
RUNAWAY_CASES = [pytest.param(engine, sql, id=f"{engine}-{name}")
                 for engine, cases in RUNAWAY.items() for name, sql in cases]


# -- the three databases and what "unchanged" means for each -----------------------------------

@pytest.fixture(scope="module")
def sqlite_target(tmp_path_factory, scratch) -> Target:
    path = copy_spider("concert_singer", tmp_path_factory.mktemp("hostile_sqlite"))
    return Target("sqlite", str(path), scratch, {"{sqlite}": str(path)}, file=path)


@pytest.fixture(scope="module")
def source_tables(sqlite_target) -> list[SourceTable]:
    """The SQLite copy's tables, read once for both the DuckDB and the PostgreSQL copy."""
    return read_sqlite_tables(sqlite_target.file)


@pytest.fixture(scope="module")
def duckdb_target(tmp_path_factory, scratch, sqlite_target, source_tables) -> Target:
    pytest.importorskip("duckdb")
    path = build_duckdb(sqlite_target.file, tmp_path_factory.mktemp("hostile_duckdb") / "concert_singer.duckdb",
                        tables=source_tables)
    return Target("duckdb", f"duckdb:///{path}", scratch, {"{sqlite}": str(sqlite_target.file)}, file=path)


@pytest.fixture(scope="module")
def postgres_target(scratch, sqlite_target, source_tables):
    pytest.importorskip("psycopg")
    dsn = pg_dsn()
    schema = unique_schema("rg_hostile")
    build_pg_schema(dsn, schema, sqlite_target.file, tables=source_tables)
    try:
        yield Target("postgres", pg_schema_url(dsn, schema), scratch,
                     {"{schema}": schema, "{sqlite}": str(sqlite_target.file)}, schema=schema, dsn=dsn)
    finally:
        drop_pg_schema(dsn, schema)
        drop_leftover_replication_slots(dsn)


@pytest.fixture
def target(request) -> Target:
    return request.getfixturevalue(f"{request.node.callspec.params['engine']}_target")


def _assert_unchanged(target: Target, sql: str) -> None:
    state = target.snapshot()
    assert state == target.initial, f"{sql!r} changed the database: {target.changes()}"
    assert state.get("pwned anywhere", []) == [], (
        "objects named pwned* exist on the PostgreSQL server: a hostile statement wrote them "
        "(now or in an earlier run; drop them by hand after reading this failure)")


def _assert_refused(result: ExecResult, sql: str) -> None:
    assert isinstance(result, ExecResult)
    assert result.error_class in ERROR_CLASSES, f"ran instead of failing: {sql!r} -> {result.rows[:3]}"
    assert result.error and result.error.strip(), f"no error text for {sql!r}"
    assert result.rows == [] and not result.ok


# -- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("engine, sql", CASES)
def test_hostile_statement_is_refused_without_writes(engine, sql, target):
    sql = fill(sql, target)
    result = target.db(timeout_s=3.0).execute_sync(sql)
    _assert_refused(result, sql)
    if engine == "postgres":
        # A READ ONLY transaction does not stop PostgreSQL's side-effect functions (sleeps, slots,
        # stats resets, COPY TO, ...), and the DSN's role may be a superuser: nothing may start
        # executing there. Only the guard's refusal or the server's parser may answer.
        assert result.error_class in ("rejected", "syntax"), f"{sql!r} reached execution: {result}"
    _assert_unchanged(target, sql)


@pytest.mark.parametrize("engine, sql", RUNAWAY_CASES)
def test_runaway_read_stops_at_timeout(engine, sql, target):
    started = time.perf_counter()
    result = target.db(timeout_s=RUNAWAY_TIMEOUT_S).execute_sync(sql)
    wall_ms = (time.perf_counter() - started) * 1000
    _assert_refused(result, sql)
    assert result.error_class == "timeout", result
    limit_ms = RUNAWAY_TIMEOUT_S * 1000 + RUNAWAY_MARGIN_MS
    assert result.elapsed_ms < limit_ms and wall_ms < limit_ms, (result.elapsed_ms, wall_ms)
    assert result.elapsed_ms >= RUNAWAY_TIMEOUT_S * 1000 * 0.9, "stopped before its deadline: not a timeout"
    _assert_unchanged(target, sql)


@pytest.mark.parametrize("engine, kind, sql", LIMIT_CASES)
def test_time_memory_and_byte_cases_are_refused_soon_after_the_timeout(engine, kind, sql, target):
    db = target.db(timeout_s=LIMIT_TIMEOUT_S, max_bytes=LIMIT_MAX_BYTES, memory_mb=LIMIT_MEMORY_MB)
    db.max_rows = 1_000_000  # the byte cap, not the row cap, must stop the wide results
    started = time.perf_counter()
    result = db.execute_sync(sql)
    wall_ms = (time.perf_counter() - started) * 1000
    _assert_refused(result, sql)
    if kind == "bytes":
        assert result.error_class in ("too_large", "timeout"), result
    if not (engine == "duckdb" and kind == "bytes"):  # DuckDB builds a wide vector in one uninterruptible call
        assert wall_ms < LIMIT_TIMEOUT_S * 1000 + RUNAWAY_MARGIN_MS, f"{wall_ms:.0f} ms"
    _assert_unchanged(target, sql)


# Simulate a guard that let something through: each engine's own read-only mode must still
# refuse to write (the second line of defence engines.py promises).
SECOND_LINE_CASES = [pytest.param(engine, sql, id=f"{engine}-{i}") for engine in ENGINES
                     for i, sql in enumerate(second_line_statements(engine))]


@pytest.mark.parametrize("engine, sql", SECOND_LINE_CASES)
def test_engine_refuses_writes_the_guard_missed(engine, sql, target, monkeypatch):
    from refinegraph.tools.sql import engines

    monkeypatch.setattr(engines, "check_read_only", lambda sql, dialect="sqlite": None)
    sql = fill(sql, target)
    result = target.db().execute_sync(sql)
    _assert_refused(result, sql)
    _assert_unchanged(target, sql)


@pytest.mark.parametrize("engine", ["sqlite", "duckdb", "postgres"])
@pytest.mark.parametrize("name, sql, expected", LEGIT, ids=[case[0] for case in LEGIT])
def test_legitimate_reads_work(engine, name, sql, expected, target):
    result = target.db().execute_sync(sql)
    assert result.ok, f"{name}: {result.error_class}: {result.error}"
    if expected is not None:
        assert result.rows == expected
    else:
        assert len(result.rows) == len(set(result.rows)) > 0


def test_enough_hostile_statements():
    per_engine = {engine: sum(1 for case in CASES + RUNAWAY_CASES if case.values[0] == engine)
                  for engine in ("sqlite", "duckdb", "postgres")}
    assert sum(per_engine.values()) >= 150, per_engine
    assert min(per_engine.values()) >= 50, per_engine


@pytest.mark.parametrize("engine", ["sqlite", "duckdb", "postgres"])
def test_no_writes_after_the_whole_suite(engine, target):
    """Runs last in this module: everything above left each database as it was built."""
    _assert_unchanged(target, "the whole suite")
    if target.file is not None:
        assert target.snapshot()["sha256"] == target.initial["sha256"]
