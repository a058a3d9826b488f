"""What only the PostgreSQL store has: the database refuses edits of history (triggers, and
an application role's grants), the password never shows, a cut connection is opened again,
concurrent first opens make the schema once. Skipped, saying how to enable them, when no
PostgreSQL server answers (REFINEGRAPH_PG_DSN)."""

from __future__ import annotations

import asyncio
import secrets
import sys
import threading
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from refinegraph import run
from refinegraph.cli.app import app
from refinegraph.trace.store import TraceStoreError
from refinegraph.trace.verify import verify_run

from conftest import scripted_by_role, verdict

psycopg = pytest.importorskip("psycopg")
cli = CliRunner()


@pytest.fixture
def pg(make_store):
    """The test's PostgreSQL stores (this module is PostgreSQL's alone)."""
    return make_store


@pytest.fixture
def store_kind(request) -> str:
    from conftest import require_pg

    require_pg()
    return "postgres"


def record(store) -> str:
    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    return asyncio.run(run("self-refine", "task", store=store, models={"local": model})).run_id


def superuser(pg):
    from conftest import pg_dsn

    return psycopg.connect(pg_dsn(), autocommit=True)


def test_the_owner_cannot_update_delete_or_truncate_history(pg):
    store = pg.new()
    run_id = record(store)
    with superuser(pg) as db:
        db.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(store.schema)))
        for sql in ("UPDATE events SET body = body || ' '", "DELETE FROM events", "TRUNCATE events",
                    "UPDATE seals SET hash = 'x'", "DELETE FROM seals", "TRUNCATE seals",
                    "DELETE FROM runs", "TRUNCATE runs CASCADE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                db.execute(sql)
    assert verify_run(store, run_id).sealed


@pytest.fixture
def app_role(pg):
    """A role made for the test (roles belong to the whole server), with the grants
    `refinegraph trace grant --apply` gives it; dropped afterwards."""
    store = pg.new()
    role = f"rg_test_app_{secrets.token_hex(4)}"
    with superuser(pg) as db:
        db.execute(psycopg.sql.SQL("CREATE ROLE {} NOLOGIN").format(psycopg.sql.Identifier(role)))
    try:
        done = cli.invoke(app, ["trace", "grant", "--store", pg.location(0), "--role", role, "--apply"])
        assert done.exit_code == 0, done.output
        assert f'GRANT SELECT, INSERT ON "{store.schema}".runs' in done.output
        yield role, f"{pg.location(0)}{quote(f' -crole={role}')}"
    finally:
        store.close()
        with superuser(pg) as db:
            db.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
            db.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def test_the_application_role_writes_runs_but_cannot_change_them(pg, app_role):
    from refinegraph.trace.store import open_store

    role, url = app_role
    with open_store(url) as store:
        assert store._query("SELECT current_user AS who")[0]["who"] == role
        run_id = record(store)  # create, append, blobs, seal, listing: everything a run does
        assert verify_run(store, run_id).sealed
        assert store.set_status(run_id, "running") is False  # sealed: no row changes, and no error
        for sql in ("UPDATE events SET body = body || ' '", "DELETE FROM events", "DELETE FROM blobs",
                    "UPDATE blobs SET data = 'x'", "DELETE FROM runs", "UPDATE runs SET graph = 'x'",
                    "ALTER TABLE events DISABLE TRIGGER events_append_only",
                    "SET session_replication_role = replica"):
            with pytest.raises(TraceStoreError, match="permission denied|must be owner|append-only"):
                store._execute(sql)
        assert verify_run(store, run_id).sealed


def test_the_application_role_cannot_make_a_store_and_is_told_who_can(pg, app_role):
    from refinegraph.trace.postgres import PostgresTraceStore

    role, url = app_role
    with pytest.raises(TraceStoreError, match="open it once as the role that owns the schema"):
        PostgresTraceStore(url.replace(pg.schemas[0], "rg_test_not_made"))


def test_the_config_names_the_schema(pg, monkeypatch):
    from refinegraph.config import Config, TraceSettings
    from refinegraph.runner import default_store

    from conftest import pg_dsn

    monkeypatch.delenv("REFINEGRAPH_TRACE_STORE")
    pg.location(0)
    with default_store(Config(trace=TraceSettings(store=pg_dsn(), schema=pg.schemas[0]))) as store:
        assert store.kind == "postgres" and store.schema == pg.schemas[0]
        assert f"(schema {pg.schemas[0]})" in store.location


def test_the_password_is_never_shown(pg, monkeypatch):
    from refinegraph.trace.postgres import PostgresTraceStore

    from conftest import pg_dsn

    base = pg_dsn().split("://", 1)[1].split("@", 1)[-1].split("/", 1)[0]
    url = f"postgresql://nosuchuser_rg:s3cr3t-pw@{base}/no_such_db_rg"
    with pytest.raises(TraceStoreError) as failed:
        PostgresTraceStore(url)
    assert "s3cr3t-pw" not in str(failed.value) and "nosuchuser_rg@" in str(failed.value)
    monkeypatch.setenv("REFINEGRAPH_TRACE_STORE", url)
    listed = cli.invoke(app, ["trace", "list"])
    assert listed.exit_code == 1 and "s3cr3t-pw" not in listed.output and "no_such_db_rg" in listed.output
    store = pg.new()
    assert ":" not in store.location.split("://", 1)[1].split("@")[0]


def test_without_psycopg_the_error_says_what_to_install(monkeypatch):
    from refinegraph.trace.store import open_store

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(TraceStoreError, match=r'pip install "refinegraph\[postgres\]"'):
        open_store("postgresql://app@localhost/audit")


def test_a_cut_connection_is_opened_again(pg):
    store = pg.new()
    first = record(store)
    with superuser(pg) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))
    assert [r["run_id"] for r in store.runs()] == [first]  # a read after the cut
    with superuser(pg) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))
    second = record(store)  # the next commit after the cut
    assert verify_run(store, second).sealed


def test_concurrent_first_opens_make_the_schema_once(pg):
    from refinegraph.trace.postgres import PostgresTraceStore

    url, errors, stores = pg.location(0), [], []
    gate = threading.Barrier(8)

    def open_one() -> None:
        gate.wait()
        try:
            stores.append(PostgresTraceStore(url))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pg.opened.extend(stores)
    assert not errors and len(stores) == 8
    record(stores[0])
    assert [len(s.runs()) for s in stores] == [1] * 8


def test_a_schema_holding_other_tables_is_refused(pg):
    from refinegraph.trace.postgres import PostgresTraceStore

    url = pg.location(0)
    with superuser(pg) as db:
        db.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(pg.schemas[0])))
        db.execute(psycopg.sql.SQL("CREATE TABLE {}.orders (id int)").format(psycopg.sql.Identifier(pg.schemas[0])))
    with pytest.raises(TraceStoreError, match="not a refinegraph trace store"):
        PostgresTraceStore(url)


def test_a_commit_whose_answer_was_lost_is_not_applied_twice(pg, monkeypatch):
    """The connection breaks after the server committed, before it answered: the commit
    is tried once more on a new connection, which finds it done instead of failing on its
    own rows (and holding the run's events for ever)."""
    store = pg.new()
    real = store._transaction
    cuts = []

    def commit_then_cut(batch):
        real(batch)
        if not cuts:
            cuts.append(batch)
            store._conn.close()
            raise psycopg.OperationalError("the connection was lost")

    monkeypatch.setattr(store, "_transaction", commit_then_cut)
    run_id = record(store)
    assert cuts and verify_run(store, run_id).sealed
