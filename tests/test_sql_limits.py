"""The eight repros of the SQL safety issue, as tests: hard limits on time, memory and result
bytes on every engine, guard failures as typed refusals, PostgreSQL privilege, the server's
database choice and listen address, honest CLI output, and DuckDB URLs.

They run on a concert_singer-shaped database of our own (hostile_sql.build_concert_db), so
they need no Spider data; PostgreSQL cases run as the read-only role `sql grant` makes (see
test_sql_engines.pg_reader) and skip only when no PostgreSQL answers. Sizes are small (values
of 20 MB, byte caps of a few MB) so each test is quick and stays far under 300 MB.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_sql_engines import pg_dsn, pg_reader
from typer.testing import CliRunner

from benchmarks.hostile_sql import PeakRss, build_concert_db
from refinegraph import run
from refinegraph.cli.app import app
from refinegraph.models import ScriptedModel
from refinegraph.tools.sql import connect
from refinegraph.tools.sql.copies import build_duckdb, build_pg_schema, drop_pg_schema, pg_schema_url, unique_schema

ENGINES = ("sqlite", "duckdb", "postgres")
COUNT = "SELECT COUNT(*) FROM singer"
BIG_VALUES = {"sqlite": "SELECT zeroblob(20000000), Name FROM singer",
              "duckdb": "SELECT repeat('x', 20000000), Name FROM singer",
              "postgres": "SELECT repeat('x', 20000000), Name FROM singer"}
MANY_ROWS = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5000) "
             "SELECT n, 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' FROM r")
DEEP_PARENS = "SELECT " + "(" * 300 + "1" + ")" * 300
DEEP_SUBQUERIES = ("SELECT COUNT(*) FROM singer WHERE Singer_ID IN "
                   + "(SELECT Singer_ID FROM singer WHERE Singer_ID IN " * 300 + "(1)" + ")" * 300)
DISCLOSING = {
    "postgres": ["SELECT rolname, rolpassword FROM pg_authid", "SELECT * FROM pg_shadow",
                 "SELECT * FROM pg_hba_file_rules", "SELECT * FROM pg_file_settings",
                 "SELECT current_setting('data_directory')", "SELECT version()", "SELECT inet_server_addr()",
                 "SELECT name, setting FROM pg_catalog.pg_settings", "SELECT pg_read_file('PG_VERSION')",
                 "SELECT usename FROM pg_user", "SELECT query FROM pg_stat_activity"],
    "duckdb": ["SELECT current_setting('memory_limit')", "SELECT * FROM duckdb_settings()", "SELECT version()",
               "SELECT * FROM pragma_database_list"],
    "sqlite": ["SELECT * FROM pragma_database_list", "SELECT * FROM pragma_compile_options", "SELECT sqlite_version()",
               "SELECT name FROM pragma_database_list()"],
}


@pytest.fixture(scope="module")
def concert(tmp_path_factory) -> Path:
    return build_concert_db(tmp_path_factory.mktemp("limits") / "concert_singer.sqlite")


@pytest.fixture(scope="module")
def pg_schema(concert):
    """A schema of its own and a read-only role for it: (admin DSN, schema, the role's URL)."""
    dsn = pg_dsn()
    schema = unique_schema("rg_limits")
    build_pg_schema(dsn, schema, concert)
    try:
        with pg_reader(dsn, schema) as url:
            yield dsn, schema, url
    finally:
        drop_pg_schema(dsn, schema)


@pytest.fixture(scope="module", params=ENGINES)
def url(request, concert, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return str(concert)
    if request.param == "duckdb":
        return f"duckdb:///{build_duckdb(concert, tmp_path_factory.mktemp('duck') / 'concert_singer.duckdb')}"
    return request.getfixturevalue("pg_schema")[2]


def engine_of(url: str) -> str:
    return connect(url).engine


# -- 1. SQLite: few, expensive steps ------------------------------------------------------------

def test_sqlite_few_expensive_steps_do_not_outrun_the_timeout(concert):
    """The progress handler ran every 1000 steps; one LIKE over a huge HEX string is a handful of
    steps, so this ran far past its timeout and came back `ok`."""
    db = connect(concert, timeout_s=1)
    sql = ("SELECT * FROM singer WHERE singer_id = 1 OR "
           "2947=LIKE('ABCDEFG',UPPER(HEX(RANDOMBLOB(25000000))))")
    started = time.perf_counter()
    result = db.execute_sync(sql)
    wall = time.perf_counter() - started
    assert not result.ok and result.error_class in ("timeout", "too_large"), result
    assert wall < 1.5, f"{wall:.2f} s for a 1 s timeout"


def test_sqlite_watchdog_interrupts_from_outside(concert):
    """A statement of cheap steps is stopped by the watchdog's interrupt() at its deadline."""
    db = connect(concert, timeout_s=0.5)
    started = time.perf_counter()
    result = db.execute_sync("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT MAX(n) FROM r")
    assert result.error_class == "timeout" and time.perf_counter() - started < 1.0


# -- 2. a byte cap on results, read incrementally ----------------------------------------------

def test_large_values_are_refused_before_they_are_held(url):
    engine = engine_of(url)
    db = connect(url, timeout_s=10, max_bytes=4_000_000)
    with PeakRss() as rss:
        result = db.execute_sync(BIG_VALUES[engine])
    assert result.error_class == "too_large" and not result.rows, result
    # six values of 20 MB: held, they would be 120 MB (DuckDB builds each value in-process before it is measured)
    assert rss.growth_mb < (150 if engine == "duckdb" else 60), f"{engine}: grew {rss.growth_mb:.0f} MB"


def test_many_small_rows_over_the_byte_cap_are_refused(url):
    db = connect(url, timeout_s=10, max_rows=100_000, max_bytes=100_000)
    result = db.execute_sync(MANY_ROWS)
    assert result.error_class == "too_large" and not result.rows and "byte cap" in result.error
    under = connect(url, timeout_s=10, max_rows=100_000, max_bytes=1_000_000).execute_sync(MANY_ROWS)
    assert under.ok and len(under.rows) == 5000 and 0 < under.result_bytes <= 1_000_000


def test_wrapped_statements_keep_order_columns_and_trailing_comments(url):
    db = connect(url)
    plain = db.execute_sync("SELECT Name, Name FROM singer ORDER BY Name DESC LIMIT 2")
    assert plain.ok and len(plain.columns) == 2 and len(plain.rows) == 2
    assert [r[0] for r in plain.rows] == sorted((r[0] for r in plain.rows), reverse=True)
    for sql in ("SELECT Name, Name FROM singer ORDER BY Name DESC LIMIT 2 -- the two last",
                "SELECT Name, Name FROM singer ORDER BY Name DESC LIMIT 2;",
                "SELECT Name, Name FROM singer /* the two last */ ORDER BY Name DESC LIMIT 2 ;\n"):
        result = db.execute_sync(sql)
        assert result.ok and result.rows == plain.rows and result.columns == plain.columns, (sql, result)


# -- 3. and 4. guard failures are typed refusals ------------------------------------------------

@pytest.mark.parametrize("sql", [DEEP_PARENS, DEEP_SUBQUERIES, "SELECT '\ud800' AS lone_surrogate",
                                 "SELECT Name FROM singer WHERE Name = '\udcff'"],
                         ids=["parens", "subqueries", "surrogate", "surrogate-in-where"])
def test_guard_failures_are_typed_refusals(url, sql):
    result = connect(url).execute_sync(sql)
    assert result.error_class == "rejected" and result.error and not result.rows
    json.dumps(result.model_dump())  # a result can always be written (to a trace, as JSON)


async def test_a_deeply_nested_sample_does_not_end_the_vote(concert, store):
    answers = iter([COUNT, DEEP_SUBQUERIES, COUNT])
    model = ScriptedModel(lambda messages: f"```sql\n{next(answers)}\n```", name="local")
    result = await run("sql-sc", {"question": "How many singers?", "db": str(concert)}, store=store,
                       models={"local": model}, params={"n": 3}, checkpoint=False)
    assert result.stop_reason == "done" and result.state["rows"] == [[6]]
    classes = [e["error_class"] for e in store.events(result.run_id, types={"sql_exec"})]
    assert classes[:3] == [None, "rejected", None]


# -- 5. PostgreSQL privilege; the same spirit on DuckDB and SQLite -----------------------------

def test_a_superuser_connection_is_refused_unless_allowed(pg_schema):
    dsn, schema, _ = pg_schema
    superuser = pg_schema_url(dsn, schema)
    refused = connect(superuser).execute_sync(COUNT)
    assert refused.error_class == "rejected" and "allow_privileged_postgres_role" in refused.error
    assert "superuser" in refused.error
    assert connect(superuser, allow_privileged_role=True).execute_sync(COUNT).rows == [(6,)]


def test_the_role_sql_grant_makes_reads_its_schema_only(pg_schema, concert):
    dsn, schema, reader = pg_schema
    assert connect(reader).execute_sync(COUNT).rows == [(6,)]
    other = unique_schema("rg_other")
    build_pg_schema(dsn, other, concert)
    try:
        result = connect(reader).execute_sync(f'SELECT COUNT(*) FROM "{other}".singer')
        assert result.error_class == "execution" and "permission denied" in result.error
    finally:
        drop_pg_schema(dsn, other)


@pytest.mark.parametrize("privileged", [False, True], ids=["read-only-role", "allowed-superuser"])
def test_catalogs_and_functions_that_disclose_the_server_are_refused(pg_schema, privileged):
    dsn, schema, reader = pg_schema
    db = connect(pg_schema_url(dsn, schema), allow_privileged_role=True) if privileged else connect(reader)
    for sql in DISCLOSING["postgres"]:
        result = db.execute_sync(sql)
        assert result.error_class == "rejected" and not result.rows, (sql, result)


def test_settings_and_outside_state_are_refused_on_every_engine(url):
    engine = engine_of(url)
    db = connect(url)
    for sql in DISCLOSING[engine]:
        assert db.execute_sync(sql).error_class == "rejected", sql
    if engine == "sqlite":  # the guard lets the database's own schema through (the authorizer decides)
        from refinegraph.tools.sql import check_read_only
        check_read_only("SELECT name FROM pragma_table_info('singer')", "sqlite")


def test_a_schema_that_does_not_exist_is_an_error(pg_schema):
    dsn, _, _ = pg_schema
    result = connect(pg_schema_url(dsn, "rg_no_such_schema"), allow_privileged_role=True).execute_sync("SELECT 1")
    assert not result.ok and "does not exist" in result.error
    out = CliRunner().invoke(app, ["sql", "--db", pg_schema_url(dsn, "rg_no_such_schema"), "--execute", "SELECT 1"])
    assert out.exit_code == 2 and "does not exist" in out.output


def test_sql_grant_prints_and_applies_a_read_only_role(pg_schema):
    import psycopg

    dsn, schema, _ = pg_schema
    role = unique_schema("rg_granted")
    printed = CliRunner().invoke(app, ["sql", "grant", "--db", dsn, "--role", role, "--schema", schema])
    assert printed.exit_code == 0, printed.output
    assert f'CREATE ROLE "{role}" LOGIN NOSUPERUSER' in printed.stdout
    assert f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}"' in printed.stdout
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
    applied = CliRunner().invoke(app, ["sql", "grant", "--db", dsn, "--role", role, "--schema", schema, "--apply"])
    try:
        assert applied.exit_code == 0, applied.output
        parsed = urlparse(dsn)
        reader = pg_schema_url(parsed._replace(netloc=f"{role}@{parsed.hostname}:{parsed.port}").geturl(), schema)
        out = CliRunner().invoke(app, ["sql", "--db", reader, "--execute", COUNT, "--json"])
        assert out.exit_code == 0 and json.loads(out.stdout)["rows"] == [[6]], out.output
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_sql_grant_refuses_to_reuse_a_superuser_role(pg_schema):
    dsn, schema, _ = pg_schema
    out = CliRunner().invoke(app, ["sql", "grant", "--db", dsn, "--role", "postgres", "--schema", schema, "--apply"])
    assert out.exit_code == 2 and "superuser" in out.output


# -- 6. the server: who chooses the database, where it listens ----------------------------------

def _server_client(cfg, store):
    from test_server import asgi_client

    from refinegraph.server.app import create_app

    model = ScriptedModel(lambda messages: f"```sql\n{COUNT}\n```", name="local")
    return asgi_client(create_app(cfg, models={"local": model}, store=store))


async def test_requests_choose_no_database_by_default(concert, store, rg_home):
    import openai

    from refinegraph.config import Config

    client = _server_client(Config.model_validate({"pipelines": {"sql": {"graph": "sql-greedy"}}}), store)
    for db in (str(concert), str(rg_home / "traces.sqlite"), pg_schema_url("postgresql://postgres@127.0.0.1/x", "s")):
        with pytest.raises(openai.BadRequestError, match="allow_request_db"):
            await client.chat.completions.create(model="sql", messages=[{"role": "user", "content": "How many?"}],
                                                 extra_body={"refinegraph": {"db": db}})


async def test_only_configured_names_may_be_chosen_and_errors_tell_nothing_of_paths(concert, store, rg_home):
    import openai

    from refinegraph.config import Config

    cfg = Config.model_validate({"pipelines": {"sql": {"graph": "sql-greedy"}},
                                 "server": {"allow_request_db": True, "databases": {"shop": str(concert)}}})
    client = _server_client(cfg, store)
    messages = [{"role": "user", "content": "How many singers?"}]
    answer = await client.chat.completions.create(model="sql", messages=messages,
                                                  extra_body={"refinegraph": {"db": "shop"}})
    assert "6" in answer.choices[0].message.content
    refusals = []
    for db in (str(concert), str(rg_home / "traces.sqlite"), "/nonexistent/x.sqlite", "/etc/passwd",
               "postgresql://postgres@127.0.0.1:5432/test"):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="sql", messages=messages,
                                                 extra_body={"refinegraph": {"db": db}})
        refusals.append(caught.value.body["message"])
    assert len(set(refusals)) == 1 and "shop" in refusals[0], refusals  # the same words, whatever exists


@pytest.mark.parametrize("host, insecure, refused", [
    ("0.0.0.0", False, True), ("192.168.1.20", False, True), ("::", False, True), ("example.org", False, True),
    ("0.0.0.0", True, False), ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False)])
def test_serve_refuses_a_public_address_without_an_api_key(monkeypatch, host, insecure, refused):
    import uvicorn

    listened = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: listened.append(host))  # a test double
    out = CliRunner().invoke(app, ["serve", "--host", host, "--port", "0", *(["--insecure"] if insecure else [])])
    if refused:
        assert out.exit_code == 2 and "without an API key" in out.output and not listened
    else:
        assert out.exit_code == 0 and listened == [host], out.output


# -- 7. refused or failed SQL is never the answer -----------------------------------------------

@pytest.fixture
def model_writes(monkeypatch):
    """Make `refinegraph sql` answer with a scripted model (a test double) writing `sql`."""
    import refinegraph.runner as cli  # the CLI imports the runner's run when a run starts

    real_run = cli.run

    def use(sql: str) -> None:
        async def with_double(graph, task, **kw):
            model = ScriptedModel(lambda messages: f"```sql\n{sql}\n```", name="local")
            return await real_run(graph, task, **kw, models={"local": model})
        monkeypatch.setattr(cli, "run", with_double)
    return use


def test_cli_does_not_print_refused_sql_as_the_answer(concert, model_writes):
    model_writes("DELETE FROM orders WHERE id = 1")
    out = CliRunner().invoke(app, ["sql", "Delete order 1", "--db", str(concert), "--graph", "sql-greedy"])
    assert out.exit_code == 1, out.output
    assert "DELETE FROM orders" not in out.stdout and out.stdout.startswith("no answer: rejected:")
    as_json = CliRunner().invoke(app, ["sql", "Delete order 1", "--db", str(concert), "--graph", "sql-greedy",
                                       "--json"])
    data = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and data["sql"] is None and data["rows"] == []
    assert data["refused_sql"] == "DELETE FROM orders WHERE id = 1" and data["error"].startswith("rejected:")


def test_cli_execute_runs_the_guard_and_limits_without_a_model(concert):
    ok = CliRunner().invoke(app, ["sql", "--db", str(concert), "--execute", COUNT, "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["rows"] == [[6]]
    for sql, error_class in (("DELETE FROM singer", "rejected"), (BIG_VALUES["sqlite"], "too_large"),
                             ("SELECT nope FROM singer", "execution")):
        out = CliRunner().invoke(app, ["sql", "--db", str(concert), "--execute", sql, "--json"])
        data = json.loads(out.stdout)
        assert out.exit_code == 1 and data["sql"] is None and data["error_class"] == error_class, out.output
        assert data["refused_sql"] == sql
    text = CliRunner().invoke(app, ["sql", "--db", str(concert), "--execute", "DELETE FROM singer"])
    assert text.exit_code == 1 and text.stdout.startswith("no answer: rejected")


def test_cli_config_limits_apply(concert, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[sql]\nmax_bytes = 2048\nmax_rows = 10000\n")
    out = CliRunner().invoke(app, ["sql", "--db", str(concert), "--execute", MANY_ROWS, "--json",
                                   "--config", str(config)])
    assert out.exit_code == 1 and json.loads(out.stdout)["error_class"] == "too_large"


# -- 8. DuckDB URLs as SQLAlchemy writes them ---------------------------------------------------

def test_duckdb_urls_as_sqlalchemy_writes_them(concert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("shop.duckdb", "hop.duckdb", "sub/x.duckdb"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        build_duckdb(concert, tmp_path / name)
    shop = str((tmp_path / "shop.duckdb").resolve())
    assert connect("duckdb:///shop.duckdb").target == shop  # three slashes: relative
    assert connect(f"duckdb:///{shop}").target == shop  # four slashes: absolute
    assert connect("duckdb:///sub/x.duckdb").target == str((tmp_path / "sub/x.duckdb").resolve())
    assert connect("shop.duckdb").target == shop and connect(shop).target == shop  # plain paths
    with pytest.raises(ValueError, match="duckdb:///"):
        connect("duckdb://shop.duckdb")  # was read as hop.duckdb
    with pytest.raises(FileNotFoundError):
        connect(f"duckdb:///{tmp_path.name}-missing.duckdb")


def test_cli_refuses_a_file_that_is_not_a_database(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 100)
    out = CliRunner().invoke(app, ["sql", "--db", str(text), "--execute", "SELECT 1"])
    assert out.exit_code == 2 and "not a readable sqlite database" in out.output
