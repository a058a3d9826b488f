"""The SQL graphs' decisions on a real Spider database, with a scripted model (a test double)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph import Budget, replay, run
from refinegraph.cli.app import app
from refinegraph.models import ScriptedModel
from refinegraph.trace.verify import verify_run

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "spider_dev" / "database" / "concert_singer"
pytestmark = pytest.mark.skipif(not SOURCE.is_dir(), reason=f"shared Spider databases not at {SOURCE}")

COUNT = "SELECT COUNT(*) FROM singer"
COUNT_OTHER_SPELLING = "select count(Singer_ID) from singer"
NAMES = "SELECT Name FROM singer"
BROKEN = "SELECT nope FROM singer"
WRITE = "DELETE FROM singer"


@pytest.fixture
def db(tmp_path) -> str:
    target = tmp_path / "concert_singer.sqlite"
    shutil.copy(SOURCE / "concert_singer.sqlite", target)
    return str(target)


def scripted(candidates: list[str], merged: str | None = None) -> ScriptedModel:
    writes = iter(candidates)

    def respond(messages):
        if messages[0]["content"].startswith("Two SQL queries"):
            return f"```sql\n{merged}\n```"
        return f"Here you go:\n```sql\n{next(writes)};\n```"
    return ScriptedModel(respond, name="local")


async def run_sql(graph, db, store, model, **kw):
    return await run(graph, {"question": "How many singers do we have?", "db": db}, store=store,
                     models={"local": model}, checkpoint=False, **kw)


async def test_greedy_executes_one_query(db, store):
    result = await run_sql("sql-greedy", db, store, scripted([COUNT]))
    assert result.state["sql"] == COUNT and result.state["rows"] == [[6]]
    execs = store.events(result.run_id, types={"sql_exec"})
    assert len(execs) == 1 and execs[0]["rows"] == 1 and execs[0]["error_class"] is None


async def test_sc_votes_by_result_not_by_text(db, store):
    model = scripted([NAMES, COUNT, COUNT_OTHER_SPELLING, BROKEN, WRITE])
    result = await run_sql("sql-sc", db, store, model, params={"n": 5})
    assert result.state["rows"] == [[6]] and result.state["sql"] == COUNT
    (vote,) = store.events(result.run_id, types={"vote"})
    assert [g["members"] for g in vote["groups"]] == [[1, 2], [0]]
    assert vote["failed"] == [3, 4] and vote["agreement"] == 0.4
    classes = [e["error_class"] for e in store.events(result.run_id, types={"sql_exec"})]
    assert classes == [None, None, None, "execution", "rejected"]


async def test_sc_tie_goes_to_the_earliest_group(db, store):
    result = await run_sql("sql-sc", db, store, scripted([NAMES, COUNT]), params={"n": 2})
    (vote,) = store.events(result.run_id, types={"vote"})
    assert vote["tie"] and result.state["sql"] == NAMES


async def test_csc_merges_the_top_two_and_checks_the_merge(db, store):
    model = scripted([NAMES, COUNT, COUNT], merged=COUNT_OTHER_SPELLING)
    result = await run_sql("csc-sql", db, store, model, params={"n": 3})
    (merge,) = store.events(result.run_id, types={"merge"})
    assert merge["accepted"] and [i["sql"] for i in merge["inputs"]] == [COUNT, NAMES]
    assert result.state["sql"] == COUNT_OTHER_SPELLING and result.state["rows"] == [[6]]
    assert verify_run(store, result.run_id).ok


async def test_csc_failed_merge_falls_back_to_the_vote_winner(db, store):
    model = scripted([NAMES, COUNT, COUNT], merged="DROP TABLE singer")
    result = await run_sql("csc-sql", db, store, model, params={"n": 3})
    (merge,) = store.events(result.run_id, types={"merge"})
    assert not merge["accepted"] and "rejected" in merge["reason"]
    assert result.fallbacks == {"merge_failed": 1} and result.state["sql"] == COUNT


async def test_csc_skips_the_merge_when_unanimous(db, store):
    model = scripted([COUNT, COUNT_OTHER_SPELLING, COUNT])
    result = await run_sql("csc-sql", db, store, model, params={"n": 3})
    assert store.events(result.run_id, types={"merge"}) == [] and result.model_calls == 1


async def test_all_candidates_failing_is_an_answerless_stop(db, store):
    result = await run_sql("sql-sc", db, store, scripted([BROKEN, WRITE]), params={"n": 2})
    assert result.stop_reason == "no_valid_sql" and result.answer is None
    assert result.fallbacks == {"no_valid_sql": 1} and result.state["sql"] is None
    assert result.state["refused_sql"] == BROKEN and result.state["error"].startswith("execution:")


async def test_budget_stop_and_replay(db, store):
    result = await run_sql("csc-sql", db, store, scripted([NAMES, COUNT, COUNT]), params={"n": 3},
                           budget=Budget(max_calls=1))
    assert result.stop_reason == "budget" and result.state["sql"] == COUNT
    replayed = await replay(result.run_id, store=store)
    assert replayed.decisions_match and replayed.model_calls == 0


def test_cli_sql_json(db, monkeypatch):
    import refinegraph.cli.running as cli
    real_run = cli.run

    async def with_double(graph, task, **kw):
        return await real_run(graph, task, **kw, models={"local": scripted([COUNT])})

    monkeypatch.setattr(cli, "run", with_double)
    out = CliRunner().invoke(app, ["sql", "How many singers?", "--db", db, "--graph", "sql-greedy", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["sql"] == COUNT and data["rows"] == [[6]] and {"run_id", "stop_reason", "usage"} <= data.keys()


def test_cli_sql_bad_database():
    out = CliRunner().invoke(app, ["sql", "q", "--db", "mysql://x/y"])
    assert out.exit_code == 2 and "unsupported database" in out.output


async def test_the_same_questions_through_the_same_graphs_on_postgresql(db, store):
    """A Spider database loaded into a PostgreSQL schema of its own answers like SQLite, read
    as the least-privileged role `refinegraph sql grant` makes."""
    from test_sql_engines import pg_dsn, pg_reader

    from refinegraph.tools.sql.copies import build_pg_schema, drop_pg_schema, unique_schema

    dsn = pg_dsn()  # skips with its reason when no PostgreSQL answers
    schema = unique_schema("rg_graphs")
    build_pg_schema(dsn, schema, Path(db))
    try:
        with pg_reader(dsn, schema) as url:
            assert "postgres@" not in url
            questions = [COUNT, "SELECT Name FROM singer WHERE Age > 30 ORDER BY Name",
                         "SELECT Country, COUNT(*) FROM singer GROUP BY Country"]
            for sql in questions:
                for graph in ("sql-greedy", "sql-sc", "csc-sql"):
                    n = {"n": 3} if graph != "sql-greedy" else {}
                    on_sqlite = await run_sql(graph, db, store, scripted([sql] * 3), params=n)
                    on_pg = await run_sql(graph, url, store, scripted([sql] * 3), params=n)
                    assert on_pg.stop_reason == "done", on_pg.state
                    assert sorted(map(tuple, on_pg.state["rows"])) == sorted(map(tuple, on_sqlite.state["rows"]))
            prompt = store.events(on_pg.run_id, types={"llm_call"})[0]
            assert "PostgreSQL" in json.dumps(store.get_blob(prompt["request_blob"]))
            # the role cannot write even where the guard is skipped, nor read another schema
            from refinegraph.tools.sql import connect
            from refinegraph.tools.sql.engines import execute_unchecked
            reader = connect(url)
            assert execute_unchecked(reader, "DELETE FROM singer").error_class in ("rejected", "execution")
            assert not execute_unchecked(reader, "SELECT COUNT(*) FROM public.pg_hidden_nothing").ok
    finally:
        drop_pg_schema(dsn, schema)


async def test_merge_prompt_shows_only_the_tables_both_queries_read(db, store):
    model = scripted([NAMES, "SELECT Name FROM stadium", "SELECT Name FROM stadium"], merged=COUNT)
    result = await run_sql("csc-sql", db, store, model, params={"n": 3})
    merge_call = store.events(result.run_id, types={"llm_call"})[-1]
    prompt = store.get_blob(merge_call["request_blob"])["messages"][-1]["content"]
    assert 'CREATE TABLE "singer"' in prompt and 'CREATE TABLE "stadium"' in prompt
    assert 'CREATE TABLE "concert"' not in prompt


HOSTILE_CANDIDATES = [
    "DROP TABLE singer", "UPDATE singer SET Age = 0", "INSERT INTO singer (Name) VALUES ('x')",
    "SELECT 1; DELETE FROM singer", "WITH d AS (DELETE FROM singer RETURNING *) SELECT * FROM d",
    "ATTACH DATABASE '/tmp/x.db' AS x", "PRAGMA writable_schema = 1", "SELECT load_extension('x')",
    "/* harmless */ DELETE FROM singer -- really", "CREATE TABLE t AS SELECT * FROM singer",
]


async def test_hostile_candidates_are_recorded_and_write_nothing(db, store):
    import hashlib
    before = hashlib.sha256(Path(db).read_bytes()).hexdigest()
    result = await run_sql("csc-sql", db, store, scripted([*HOSTILE_CANDIDATES, COUNT], merged=COUNT),
                           params={"n": len(HOSTILE_CANDIDATES) + 1})
    execs = store.events(result.run_id, types={"sql_exec"})[:len(HOSTILE_CANDIDATES)]
    # Only the first statement of a reply is ever taken: "SELECT 1; DELETE ..." runs as "SELECT 1".
    assert execs[3]["sql"] == "SELECT 1" and execs[3]["error_class"] is None
    others = execs[:3] + execs[4:]
    assert [e["error_class"] for e in others] == ["rejected"] * len(others) and all(e["error"] for e in others)
    assert result.state["sql"] == COUNT and hashlib.sha256(Path(db).read_bytes()).hexdigest() == before


def test_bird_layout_is_read(tmp_path):
    from refinegraph.bench.spider import load_questions
    (tmp_path / "dev_databases" / "concert_singer").mkdir(parents=True)
    shutil.copy(SOURCE / "concert_singer.sqlite", tmp_path / "dev_databases" / "concert_singer")
    (tmp_path / "dev.json").write_text(json.dumps([{"db_id": "concert_singer", "question": "How many singers?",
                                                    "SQL": COUNT, "evidence": "singer is a table",
                                                    "difficulty": "simple"}]))
    (question,) = load_questions(tmp_path)
    assert question.gold == COUNT and question.evidence == "singer is a table" and question.difficulty == "simple"


@pytest.mark.parametrize("reply, sql", [
    ("Here is the query: SELECT 1", "SELECT 1"),
    ("```sql\nSELECT a FROM b;\n```\nThis counts rows.", "SELECT a FROM b"),
    ("Let me create a query: SELECT 2; DROP TABLE x", "SELECT 2"),
    ("CREATE TABLE t AS SELECT * FROM singer", "CREATE TABLE t AS SELECT * FROM singer"),
    ("INSERT INTO x SELECT 1", "INSERT INTO x SELECT 1"),
    ("delete from t where x in (select 1)", "delete from t where x in (select 1)"),
    ("SELECT 'a;b' FROM t; SELECT 2", "SELECT 'a;b' FROM t"),
])
def test_extract_sql_keeps_what_the_model_wrote(reply, sql):
    from refinegraph.tools.sql.extract import extract_sql
    assert extract_sql(reply) == sql
