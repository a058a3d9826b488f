"""Shared fixtures: an isolated REFINEGRAPH_HOME per test, a trace store, scripted models."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from refinegraph.cli.harness import import_benchmarks
from refinegraph.models import ScriptedModel
from refinegraph.trace.store import SQLITE_SCHEMA, BaseTraceStore, _statements

from data_paths import unpack_pool
from needs import DEFAULT_PG_DSN, needs, pytest_terminal_summary  # noqa: F401 - the skip summary is a hook

# benchmarks/ is not installed: imported from this checkout by its path, as `refinegraph bench`
# does, so tests that use its harnesses and stub servers import `benchmarks.*` (the checkout's
# root stays off sys.path: the role folders must not be importable under their own names).
import_benchmarks(Path(__file__).resolve().parent.parent / "benchmarks")

from benchmarks.hostile_sql import make_scratch, remove_scratch  # noqa: E402
from benchmarks.stub_server import role_of  # noqa: E402

STORE_KINDS = ("sqlite", "postgres")
PG_CONNECT_TIMEOUT_S = 2


def pytest_configure(config):
    """The both_stores marker; and the fast suite runs on SmolLM2 whatever else is installed
    (the qwen suite names its model)."""
    config.addinivalue_line("markers", "both_stores: run each test that takes a trace store on SQLite and on "
                                       "PostgreSQL (the store_kind fixture)")
    os.environ["REFINEGRAPH_LOCAL_MODEL"] = "smollm2-135m"


def pytest_generate_tests(metafunc):
    """Tests marked both_stores that take a store (store, make_store, store_kind) run once
    per store kind; every other test keeps SQLite."""
    if "store_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store_kind", STORE_KINDS, indirect=True)


def without_password(dsn: str) -> str:
    """The DSN as a skip reason may show it: any password replaced by ***."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def probe_postgres(configured: str | None, default: str = DEFAULT_PG_DSN) -> tuple[str, str | None]:
    """The DSN the PostgreSQL tests use (`configured`, i.e. REFINEGRAPH_PG_DSN, else `default`)
    and why no server answers there, as a skip reason; None when one does."""
    dsn = configured or default
    shown = without_password(dsn)
    where = f"REFINEGRAPH_PG_DSN={shown}" if configured else f"{shown} (REFINEGRAPH_PG_DSN is unset; its default)"
    try:
        import psycopg
    except ImportError:
        return dsn, needs("PostgreSQL", "psycopg is not installed (the dev extra installs it)")
    try:
        psycopg.connect(dsn, connect_timeout=PG_CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return dsn, needs("PostgreSQL", f"no server answers at {where}: {first}; set REFINEGRAPH_PG_DSN")
    return dsn, None


@cache
def _postgres() -> tuple[str, str | None]:
    """probe_postgres of this session's REFINEGRAPH_PG_DSN, asked once."""
    return probe_postgres(os.environ.get("REFINEGRAPH_PG_DSN"))


def pg_dsn() -> str | None:
    """REFINEGRAPH_PG_DSN, else the local test server, when a server answers there; else None."""
    dsn, problem = _postgres()
    return None if problem else dsn


def require_pg() -> str:
    """pg_dsn(), or skip the test with the reason (what was tried, and REFINEGRAPH_PG_DSN)."""
    dsn, problem = _postgres()
    if problem:
        pytest.skip(problem)
    return dsn


@pytest.fixture(scope="session")
def pools(tmp_path_factory) -> Path:
    """A folder with the stored pools (tests/data/pools) unpacked: date_faithfulcot.jsonl
    and gsm8k_faithfulcot.jsonl."""
    folder = tmp_path_factory.mktemp("pools")
    for name in ("date_faithfulcot", "gsm8k_faithfulcot"):
        unpack_pool(name, folder)
    return folder


@pytest.fixture(autouse=True)
def rg_home(tmp_path, monkeypatch):
    """Every test gets its own home: traces, checkpoints and config never leak between tests
    (the stores the runner shares per location are closed after each test)."""
    from refinegraph.runner import close_shared_stores

    home = tmp_path / "rghome"
    monkeypatch.setenv("REFINEGRAPH_HOME", str(home))
    monkeypatch.delenv("REFINEGRAPH_TRACE_STORE", raising=False)
    yield home
    close_shared_stores()


class Stores:
    """Trace stores of one kind for a test: SQLite files in the test's home, or PostgreSQL
    schemas `rg_test_<random>` of their own (dropped at teardown)."""

    def __init__(self, kind: str, home):
        self.kind, self.home = kind, home
        self.opened: list[BaseTraceStore] = []
        self.schemas: list[str] = []

    def url(self, schema: str) -> str:
        """The PostgreSQL URL of a schema (as REFINEGRAPH_TRACE_STORE or `trace copy` take it)."""
        dsn = pg_dsn()
        return f"{dsn}{'&' if '?' in dsn else '?'}options={quote(f'-csearch_path={schema}')}"

    def location(self, index: int = 0) -> str:
        """Where the index-th store of this test is (a path or a URL), whether opened or not."""
        if self.kind == "sqlite":
            return str(self.home / ("traces.sqlite" if index == 0 else f"traces-{index}.sqlite"))
        while len(self.schemas) <= index:
            self.schemas.append(f"rg_test_{secrets.token_hex(6)}")
        return self.url(self.schemas[index])

    def new(self) -> BaseTraceStore:
        """Another empty store (the first is the one the CLI and default_store find)."""
        from refinegraph.trace.store import open_store

        store = open_store(self.location(len(self.opened)))
        self.opened.append(store)
        return store

    def tamper(self, store: BaseTraceStore, sql: str, args: tuple = ()) -> list[tuple]:
        """Run `sql` (`?` placeholders) on `store` as its superuser would, around the
        append-only triggers: what an attacker with the database could do. The rows it
        returns, if any."""
        if store.kind == "sqlite":
            db = sqlite3.connect(store.path, isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE")
                triggers = [s for s in _statements(SQLITE_SCHEMA) if s.startswith("CREATE TRIGGER")]
                for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
                    db.execute(f"DROP TRIGGER {name}")
                rows = db.execute(sql, args).fetchall()
                for statement in triggers:
                    db.execute(statement)
                db.execute("COMMIT")
                return rows
            finally:
                db.close()
        import psycopg

        from refinegraph.trace.postgres import to_postgres

        with psycopg.connect(pg_dsn()) as db:
            db.execute("SET LOCAL session_replication_role = replica")
            db.execute(psycopg.sql.SQL("SET LOCAL search_path TO {}").format(psycopg.sql.Identifier(store.schema)))
            cursor = db.execute(to_postgres(sql), args)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        for store in self.opened:
            store.close()
        if self.schemas:
            import psycopg

            with psycopg.connect(pg_dsn(), autocommit=True) as db:
                for schema in self.schemas:
                    db.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        psycopg.sql.Identifier(schema)))


@pytest.fixture
def store_kind(request) -> str:
    """sqlite, or postgres in modules marked both_stores (skipped without a server)."""
    kind = getattr(request, "param", "sqlite")
    if kind == "postgres":
        require_pg()
    return kind


@pytest.fixture
def make_store(store_kind, rg_home, monkeypatch) -> Stores:
    """Stores of the test's kind: `.new()` opens another, `.tamper(store, sql)` edits one
    around its triggers. The first is where the CLI and `refinegraph.run` without `store=`
    look (SQLite: the home's traces.sqlite; PostgreSQL: named by REFINEGRAPH_TRACE_STORE)."""
    stores = Stores(store_kind, rg_home)
    if store_kind == "postgres":
        monkeypatch.setenv("REFINEGRAPH_TRACE_STORE", stores.location(0))
    yield stores
    stores.close()


@pytest.fixture
def store(make_store) -> BaseTraceStore:
    return make_store.new()


@pytest.fixture
def tamper(make_store, store) -> Callable[..., list[tuple]]:
    """`tamper(sql, args=())`: edit the test's store around its append-only triggers."""
    return lambda sql, args=(): make_store.tamper(store, sql, args)


def verdict(score: int, done: bool = False, edits: list[str] | None = None) -> str:
    return json.dumps({"correctness": score, "completeness": score, "clarity": score, "score": score,
                       "verdict": "done" if done else "revise", "edits": edits or ["be more precise"]})


def scripted_by_role(critic_replies: list[str], name: str = "local", **kwargs) -> ScriptedModel:
    """A test double that answers each role from its own script: solver and refiner texts
    are numbered, the critic's replies come from `critic_replies` in order."""
    counters = {"solver": 0, "refiner": 0, "critic": 0}

    def respond(messages: list[dict[str, Any]]) -> str:
        role = role_of(messages)
        counters[role] += 1
        if role == "critic":
            return critic_replies[counters["critic"] - 1]
        return f"{role} answer {counters[role]}"

    model = ScriptedModel(respond, name=name, **kwargs)
    model.counters = counters  # type: ignore[attr-defined]
    return model


@pytest.fixture
def make_scripted() -> Callable[..., ScriptedModel]:
    return scripted_by_role


@pytest.fixture(autouse=True)
def fresh_compiled_graphs():
    """Tests that swap a node function need the graph compiled again."""
    from refinegraph.runner import clear_compiled_graphs
    clear_compiled_graphs()
    yield
    clear_compiled_graphs()


@pytest.fixture(scope="module")
def scratch():
    """Where file-writing hostile SQL aims (see hostile_sql.make_scratch): outside every database."""
    folder = make_scratch()
    yield folder
    remove_scratch(folder)
