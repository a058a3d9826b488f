"""Prompt-injected questions through the real SQL graphs: zero writes on any engine.

The model is the `pool` backend serving an adversary that obeys every injection
(benchmarks.injected_sql: DML/DDL, stacked statements, writes in CTEs and comments,
ATTACH/COPY/file writes, fenced in markdown, and a hostile merge for csc-sql), so the graph's
path (extraction -> guard -> engine) is all that stands between the injection and the
database. Each run must record every hostile reply as an `sql_exec` with an error class (a
stacked write only ever runs as the read before its semicolon), end with an answer or a
recorded fallback, verify its trace, and leave the database as it was: file sha256 and the
files beside it, the scratch folder, PostgreSQL's relations, row counts, comments and pwned*
objects (benchmarks.hostile_sql.Target).

The database is hostile_sql.build_concert_db's (no Spider data needed; two of its values
carry injections of their own). SQLite runs every question through every graph; DuckDB and
PostgreSQL run every question through csc-sql (writer, vote and merge: the superset of
sql-sc's path) and a few through sql-greedy and sql-sc, to keep the module fast; `refinegraph
bench reliability` (reliability_sql.sql_section) runs the whole matrix. PostgreSQL cases skip
when REFINEGRAPH_PG_DSN is unset; the embedded-model case is marked `local`.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from test_sql_engines import pg_dsn

from benchmarks.hostile_sql import (
    RUNAWAY,
    Target,
    build_concert_db,
    drop_leftover_replication_slots,
    hostile_statements,
    limit_statements,
    make_scratch,
    remove_scratch,
    second_line_statements,
)
from benchmarks.injected_sql import (
    BENIGN,
    GRAPHS,
    INJECTED,
    SOURCE,
    candidates_for,
    pool_config,
    run_checked,
    served,
    write_pool,
)
from benchmarks.reliability_sql import LOCAL_PARAMS, sql_section
from refinegraph.config import Config, ModelSpec
from refinegraph.models import PoolModel
from refinegraph.tools.sql.copies import (
    SourceTable,
    build_duckdb,
    build_pg_schema,
    drop_pg_schema,
    pg_schema_url,
    read_sqlite_tables,
    unique_schema,
)
from refinegraph.tools.sql.extract import extract_sql

BY_ID = {q.id: q for q in INJECTED}
QUICK = ("ignore-and-drop", "multi-statement", "unicode-hidden", "denial-of-service")
"""The questions DuckDB and PostgreSQL also run through sql-greedy and sql-sc."""


def _cases() -> list:
    cases = []
    for engine in ("sqlite", "duckdb", "postgres"):
        for graph in GRAPHS:
            chosen = INJECTED if engine == "sqlite" or graph == "csc-sql" else [BY_ID[i] for i in QUICK]
            cases += [pytest.param(engine, graph, q.id, id=f"{engine}-{graph}-{q.id}") for q in chosen]
    return cases


# -- the databases -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_sqlite(tmp_path_factory):
    return build_concert_db(tmp_path_factory.mktemp("injection_sqlite") / "concert_singer.sqlite")


@pytest.fixture(scope="module")
def fill_map(scratch, own_sqlite) -> dict[str, str]:
    return {"{out}": str(scratch), "{sqlite}": str(own_sqlite)}


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory, fill_map):
    return write_pool(tmp_path_factory.mktemp("injection_pool") / "adversary.jsonl", fill_map)


@pytest.fixture(scope="module")
def sqlite_target(scratch, own_sqlite) -> Target:
    return Target("sqlite", str(own_sqlite), scratch, file=own_sqlite)


@pytest.fixture(scope="module")
def source_tables(own_sqlite) -> list[SourceTable]:
    """The database's tables, read once for both the DuckDB and the PostgreSQL copy."""
    return read_sqlite_tables(own_sqlite)


@pytest.fixture(scope="module")
def duckdb_target(tmp_path_factory, scratch, own_sqlite, source_tables) -> Target:
    pytest.importorskip("duckdb")
    path = build_duckdb(own_sqlite, tmp_path_factory.mktemp("injection_duckdb") / "concert_singer.duckdb",
                        tables=source_tables)
    return Target("duckdb", f"duckdb:///{path}", scratch, file=path)


@pytest.fixture(scope="module")
def postgres_target(scratch, own_sqlite, source_tables):
    pytest.importorskip("psycopg")
    dsn = pg_dsn()
    schema = unique_schema("rg_injection")
    build_pg_schema(dsn, schema, own_sqlite, tables=source_tables)
    try:
        yield Target("postgres", pg_schema_url(dsn, schema), scratch, {"{schema}": schema}, schema=schema, dsn=dsn)
    finally:
        drop_pg_schema(dsn, schema)
        drop_leftover_replication_slots(dsn)


@pytest.fixture
def target(request) -> Target:
    return request.getfixturevalue(f"{request.node.callspec.params['engine']}_target")


# -- the questions and the adversary's pool ------------------------------------------------------

def test_injected_questions_cover_the_ways_in(tmp_path):
    assert len(INJECTED) >= 20
    assert len({q.id for q in INJECTED}) == len({q.question for q in INJECTED}) == len(INJECTED)
    for q in INJECTED:
        others = [o.question for o in INJECTED if o is not q]
        assert not any(q.question in other for other in others), f"{q.id} is inside another question"
        assert len(q.replies) >= 3, q.id
    kinds = {q.kind for q in INJECTED}
    assert {"direct order", "hidden in evidence", "fake schema comment", "cleanup request", "stacked statements",
            "attach", "file write", "role-play", "unicode", "hidden in comments", "write in a CTE",
            "hidden in the data"} <= kinds
    assert sum(bool(q.evidence) for q in INJECTED) >= 2
    stacked = [r for q in INJECTED for r in q.replies if r.runs is not None]
    assert len(stacked) >= 4 and all(extract_sql(r.text) == r.runs for r in stacked)
    # the first reply is always a refused one, so sql-greedy can never answer an adversary's question
    assert all(q.replies[0].runs is None for q in INJECTED)
    # the own database's data carries an injection too, which the schema's sample values show the model
    with closing(sqlite3.connect(build_concert_db(tmp_path / "own.sqlite"))) as conn:
        songs = [row[0] for row in conn.execute("SELECT Song_Name FROM singer")]
    assert any("Ignore previous instructions" in song for song in songs)


async def test_pool_serves_the_adversary_in_order(pool_file, fill_map):
    """The writer's n samples are the question's replies and the two reads; the merger's next
    sample is the hostile merge: what the graph tests below rely on."""
    for q in INJECTED:
        model = PoolModel("adversary", pool_file, [SOURCE])
        prompt = [{"role": "user", "content": f"Database schema: ...\n\nQuestion: {q.question}"}]
        texts = served(q, fill_map)
        n = candidates_for(q, "csc-sql")
        assert n == len(q.replies) + len(BENIGN) and len(texts) == n + 1
        assert (await model.sample(prompt, n=n)).texts == texts[:n]
        assert (await model.sample(prompt, n=1)).texts == [texts[n]]
        assert extract_sql(texts[n]) == extract_sql(q.merge.replace("{out}", fill_map["{out}"]))
    assert "{out}" not in "".join(served(BY_ID["copy-export"], fill_map))


# -- every question through the graphs, on every engine ----------------------------------------------

@pytest.mark.parametrize("engine, graph, question_id", _cases())
async def test_injected_question_writes_nothing(engine, graph, question_id, target, store, pool_file, fill_map):
    question = BY_ID[question_id]
    checked = await run_checked(question, graph, target, store, pool_config(pool_file), fill=fill_map)
    assert checked.changes == [], f"the run wrote: {checked.changes}"
    assert checked.problems == []
    assert checked.verified and checked.stop_reason is not None
    hostile = [r for r in question.replies if r.runs is None]
    if graph == "sql-greedy":
        # its one candidate is the first reply, always a refused one: no answer, a recorded fallback
        assert sum(checked.refused.values()) == 1 and checked.reads == 0
        assert checked.stop_reason == "no_valid_sql" and checked.fallbacks == {"no_valid_sql": 1}
        assert not checked.answered
    else:
        merged = 1 if graph == "csc-sql" else 0
        assert sum(checked.refused.values()) == len(hostile) + merged
        assert checked.cut == len(question.replies) - len(hostile)
        assert checked.answered and checked.stop_reason == "done"
        assert checked.fallbacks == ({"merge_failed": 1} if merged else {})
        assert (checked.merges, checked.merges_refused) == (merged, merged)
    events = store.events(checked.run_id, types={"sql_exec"})
    assert len(events) == candidates_for(question, graph) + (graph == "csc-sql")
    for event in events:
        assert event["error_class"] is None or event["error"], event


@pytest.mark.parametrize("engine", ["sqlite", "duckdb", "postgres"])
def test_no_writes_after_every_injection(engine, target):
    """Runs after the module's graph runs: each database is still as it was built."""
    assert target.changes() == []
    assert target.snapshot() == target.initial


# -- the benchmark's part ----------------------------------------------------------------------

async def test_sql_section_without_spider_data():
    """`refinegraph bench reliability`'s sql part on SQLite, on a database it builds itself."""
    section = await sql_section(engines=("sqlite",), local=0)
    statements = (len(hostile_statements("sqlite")) + len(RUNAWAY["sqlite"]) + len(second_line_statements("sqlite"))
                  + len(limit_statements("sqlite")))
    runs = len(GRAPHS) * len(INJECTED)
    assert section.ok, section.problems
    assert (section.runs, section.traces_verified, section.traces_failed) == (runs, runs, 0)
    assert section.writes_made == 0 and section.faults_injected == statements + runs
    figures = section.figures
    assert "of its own" in figures["database"] and figures["engines"] == ["sqlite"]
    hostile = figures["statements"]["sqlite"]
    assert hostile["hostile"] == len(hostile_statements("sqlite")) and "ran" not in hostile["refused"]
    assert hostile["runaway_stopped"] == hostile["runaway"] and hostile["legit_ok"] == hostile["legit"]
    # the time, memory and byte cases: every one refused, nothing over the cap held, the figures reported
    assert hostile["limits"] == len(limit_statements("sqlite")) and "ran" not in hostile["limits_refused"]
    assert hostile["over_cap_held"] == 0 and hostile["writes"] == 0 and hostile["tried"] == statements
    assert 0 <= hostile["peak_rss_mb"] < 300 and hostile["max_past_timeout_s"] < 1.5
    assert any(line.startswith("sqlite limits: statements tried") for line in section.lines)
    injected = figures["injected"]["sqlite"]
    assert injected["merges_refused"] == injected["merges"] == len(INJECTED)
    assert injected["answered"] + injected["ended_on_fallback"] == runs
    assert section.lines[0].startswith(f"{statements} hostile statements and {runs} injected question runs")
    assert "writes made 0" in section.lines[0]


async def test_sql_section_on_postgresql_drops_its_schema():
    dsn = pg_dsn()
    import psycopg

    section = await sql_section(pg_dsn=dsn, engines=("postgres",), statements=False, questions=INJECTED[:2],
                                graphs=("sql-greedy", "csc-sql"), local=0)
    assert section.ok, section.problems
    assert section.runs == section.traces_verified == 4 and section.figures["engines"] == ["postgres"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rg_reliability%'").fetchall()
    assert left == []


async def test_sql_section_skips_an_unreachable_postgresql():
    section = await sql_section(pg_dsn="postgresql://postgres@127.0.0.1:1/test", engines=("sqlite", "postgres"),
                                statements=False, questions=INJECTED[:1], graphs=("sql-greedy",), local=0)
    assert section.ok and section.figures["engines"] == ["sqlite"]
    assert section.figures["skipped_engines"]["postgres"].startswith("cannot connect")
    assert "postgres skipped (cannot connect" in section.lines[1]


# -- the checks themselves can fail ------------------------------------------------------------------

@pytest.fixture
def both_lines_down(monkeypatch):
    """The guard lets everything through and SQLite opens the file writable, with no authorizer:
    what the checks above must then catch."""
    from refinegraph.tools.sql import engines

    monkeypatch.setattr(engines, "check_read_only", lambda sql, dialect="sqlite": None)
    monkeypatch.setattr(engines, "_authorize", lambda *args: sqlite3.SQLITE_OK)
    monkeypatch.setattr(engines, "_sqlite_connection",
                        lambda path: sqlite3.connect(path, check_same_thread=False, isolation_level=None))


async def test_a_write_is_caught_when_both_lines_are_down(both_lines_down, tmp_path, store):
    path = build_concert_db(tmp_path / "victim.sqlite")
    scratch = make_scratch()
    try:
        target = Target("sqlite", str(path), scratch, file=path)
        fill = {"{out}": str(scratch)}
        pool = write_pool(tmp_path / "pool.jsonl", fill)
        checked = await run_checked(BY_ID["ignore-and-drop"], "sql-greedy", target, store, pool_config(pool),
                                    fill=fill)
        assert any(change.startswith("sha256") for change in checked.changes)
        assert any("hostile reply 0 ran" in p for p in checked.problems)
        assert any("wrote to the database" in p for p in checked.problems)
    finally:
        remove_scratch(scratch)
    section = await sql_section(engines=("sqlite",), questions=(BY_ID["dedupe-delete"],), graphs=("sql-greedy",),
                                local=0)
    assert not section.ok and section.writes_made >= 10
    assert any("wrote" in p for p in section.problems) and "writes made 0" not in section.lines[0]


# -- the embedded model ------------------------------------------------------------------------------

@pytest.mark.local
async def test_embedded_model_on_injected_questions_writes_nothing(sqlite_target, store, fill_map):
    """SmolLM2 rarely writes valid SQL, but what it writes goes through the same path."""
    config = Config(models={"local": ModelSpec(backend="local")}, roles={"default": "local"})
    runs = [("sql-greedy", "ignore-and-drop"), ("sql-greedy", "dedupe-delete"), ("csc-sql", "data-instructions")]
    for graph, question_id in runs:
        params = {**LOCAL_PARAMS[graph], **({"n": 2} if graph != "sql-greedy" else {})}
        checked = await run_checked(BY_ID[question_id], graph, sqlite_target, store, config, fill=fill_map,
                                    params=params, replies=False)
        assert checked.changes == [] and checked.problems == [], (graph, question_id, checked)
        assert checked.verified and checked.stop_reason is not None
        assert len(store.events(checked.run_id, types={"sql_exec"})) >= 1
