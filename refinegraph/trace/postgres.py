"""The PostgreSQL trace store: one audit log for serve replicas, batch workers and hosts.

The same tables and queries as the SQLite store (refinegraph.trace.store), in a schema of
their own (`refinegraph` by default), made on first open under an advisory lock so that
concurrent first opens wait for each other. The database enforces that history is
append-only: triggers refuse UPDATE, DELETE and TRUNCATE on `events` and `seals` (and
DELETE and TRUNCATE on `runs`), even for the tables' owner; `grant_statements` gives an
application role INSERT and SELECT only (plus the listing columns of `runs` it must update),
so even a role that could drop a trigger is not the one the application runs as.

One connection per store object, used under the store's lock: reads in autocommit, each
`_apply` one transaction. A connection found broken (the server restarted, an idle
connection was cut) is opened again once before the error is raised; a commit whose
connection broke is tried again only if the server did not commit it already.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import sqlglot
from tenacity import retry, retry_if_exception, stop_after_attempt

from refinegraph.trace.store import (
    RUN_COLUMNS,
    BaseTraceStore,
    Batch,
    TraceStoreError,
    _listing_update,
)

INSTALL_HINT = 'the PostgreSQL trace store needs psycopg: pip install "refinegraph[postgres]"'
SCHEMA_MARK = "refinegraph trace store, schema 1"
"""The schema's comment: a schema carrying it holds a store made by this module."""
SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    graph TEXT NOT NULL,
    input_preview TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    stop_reason TEXT,
    answer_preview TEXT,
    sealed_hash TEXT,
    replay_of TEXT,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    data BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS seals (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE OR REPLACE FUNCTION refinegraph_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'trace % are append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE OR REPLACE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refinegraph_append_only();
CREATE OR REPLACE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refinegraph_append_only();
CREATE OR REPLACE TRIGGER seals_append_only BEFORE UPDATE OR DELETE ON seals
    FOR EACH ROW EXECUTE FUNCTION refinegraph_append_only();
CREATE OR REPLACE TRIGGER seals_no_truncate BEFORE TRUNCATE ON seals
    FOR EACH STATEMENT EXECUTE FUNCTION refinegraph_append_only();
CREATE OR REPLACE TRIGGER runs_no_delete BEFORE DELETE ON runs
    FOR EACH ROW EXECUTE FUNCTION refinegraph_append_only();
CREATE OR REPLACE TRIGGER runs_no_truncate BEFORE TRUNCATE ON runs
    FOR EACH STATEMENT EXECUTE FUNCTION refinegraph_append_only();
"""

LISTING_COLUMNS = ("status", "stop_reason", "answer_preview", "sealed_hash", "owner")
"""The columns of `runs` a writer updates (a run's end, its status, a resume's claim)."""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise TraceStoreError(INSTALL_HINT) from exc
    return psycopg


@lru_cache(maxsize=256)
def to_postgres(sql: str) -> str:
    """A query of BaseTraceStore (SQLite dialect, `?` placeholders) in PostgreSQL's dialect
    with psycopg's `%s` placeholders."""
    return sqlglot.transpile(sql, read="sqlite", write="postgres")[0]


def url_schema(url: str) -> str | None:
    """The schema a URL names in its `options=-csearch_path=...`, if any."""
    options = " ".join(parse_qs(urlsplit(url).query).get("options", []))
    found = re.search(r"-c\s*search_path\s*=\s*([A-Za-z_][A-Za-z0-9_]*)", unquote(options))
    return found.group(1) if found else None


def public_location(url: str, schema: str) -> str:
    """The store's URL without its password (and query), with its schema: for messages."""
    parts = urlsplit(url)
    user = f"{unquote(parts.username)}@" if parts.username else ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{user}{host}{port}{parts.path} (schema {schema})"


def _broken(exc: BaseException) -> bool:
    psycopg = _psycopg()
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and getattr(exc, "_rg_broken", False)


class PostgresTraceStore(BaseTraceStore):
    """A trace store in a PostgreSQL schema (created with its tables and triggers on first
    open, when the connecting role may; a store made earlier is only read and written).

    `schema`: where the tables are; a `search_path` in the URL's `options` wins over it.
    """

    kind = "postgres"

    def __init__(self, url: str, *, schema: str = "refinegraph"):
        super().__init__()
        self._psycopg = _psycopg()
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.schema = url_schema(self.url) or schema
        if not SCHEMA_NAME.match(self.schema):
            raise TraceStoreError(f"{self.schema!r} is not a schema name (letters, digits and _, at most 63)")
        self.location = public_location(self.url, self.schema)
        self._password = unquote(urlsplit(self.url).password or "")
        self._conn: Any = None
        try:
            self._connect()
            self._prepare()
        except self._psycopg.errors.InsufficientPrivilege as exc:
            self.close()
            raise TraceStoreError(f"{self.location}: the store is not made yet, and this role may not make it "
                                  f"({self._scrub(exc)}): open it once as the role that owns the schema, then "
                                  "`refinegraph trace grant --role ROLE --apply`") from exc
        except self._psycopg.Error as exc:
            self.close()
            raise TraceStoreError(f"{self.location}: not a usable trace store: {self._scrub(exc)}") from exc
        except TraceStoreError:
            self.close()
            raise

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> None:
        from psycopg.rows import dict_row

        self._conn = self._psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
        self._conn.execute(self._psycopg.sql.SQL("SET search_path TO {}").format(
            self._psycopg.sql.Identifier(self.schema)))

    def _scrub(self, exc: BaseException) -> str:
        """The error's first line, never holding the password."""
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return text.replace(self._password, "***") if self._password else text

    def _prepare(self) -> None:
        """The schema, tables and triggers, made once by whichever process comes first: the
        check is a read; the setup holds a transaction-scoped advisory lock, so concurrent
        first opens wait for each other, then find everything made."""
        if self._marked():
            return
        sql = self._psycopg.sql
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"refinegraph schema {self.schema}",))
            if self._marked():
                return
            tables = self._conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (self.schema,)).fetchall()
            if {row["table_name"] for row in tables} - {"runs", "events", "blobs", "seals"}:
                raise TraceStoreError(f"{self.location}: the schema holds other tables and is not a refinegraph "
                                      "trace store; pick another schema ([trace] schema)")
            self._conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            self._conn.execute(TABLES)
            self._conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                sql.Identifier(self.schema), sql.Literal(SCHEMA_MARK)))

    def _marked(self) -> bool:
        row = self._conn.execute("SELECT obj_description(oid, 'pg_namespace') AS mark FROM pg_namespace "
                                 "WHERE nspname=%s", (self.schema,)).fetchone()
        return bool(row) and row["mark"] == SCHEMA_MARK

    def _reconnect(self, retry_state: Any) -> None:
        try:
            self._conn.close()
        finally:
            self._connect()

    def _once_more(self, fn: Any, *args: Any, doing: str = "") -> Any:
        """`fn(*args)`, again on a fresh connection if the first try found it broken."""

        def attempt() -> Any:
            try:
                return fn(*args)
            except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
                exc._rg_broken = self._conn is None or self._conn.closed or self._conn.broken  # type: ignore[attr-defined]
                raise

        runner = retry(retry=retry_if_exception(_broken), stop=stop_after_attempt(2), before_sleep=self._reconnect,
                       reraise=True)(attempt)
        with self._lock:
            try:
                return runner()
            except self._psycopg.Error as exc:
                raise TraceStoreError(f"{self.location}: {doing}{self._scrub(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()

    # -- the store interface --------------------------------------------------------------

    def _query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        return self._once_more(lambda: self._conn.execute(to_postgres(sql), args).fetchall(),
                               doing="cannot read the store: ")

    def _execute(self, sql: str, args: tuple = ()) -> int:
        return self._once_more(lambda: self._conn.execute(to_postgres(sql), args).rowcount)

    def _apply(self, batch: Batch) -> None:
        tries = []

        def once() -> None:
            tries.append(1)
            if len(tries) > 1 and self._committed_before(batch):
                return  # the connection broke after the server committed, before it said so
            self._transaction(batch)

        self._once_more(once, doing="the commit failed and was rolled back: ")

    def _committed_before(self, batch: Batch) -> bool:
        """Whether a batch tried on a connection that broke was committed all the same: its
        first event (or run) is there. A batch is one transaction, and only its writer appends
        at that place of its run's chain, so its first row tells for all of it."""
        if batch.events:
            run_id, seq, *_, digest = batch.events[0]
            found = self._conn.execute("SELECT hash FROM events WHERE run_id=%s AND seq=%s", (run_id, seq)).fetchone()
            return found is not None and found["hash"] == digest
        if batch.runs:
            return self._conn.execute("SELECT 1 FROM runs WHERE run_id=%s",
                                      (batch.runs[0]["run_id"],)).fetchone() is not None
        return False  # blobs, seals and listing updates alone can be applied again

    def _transaction(self, batch: Batch) -> None:
        with self._conn.transaction(), self._conn.cursor() as cur:
            if batch.runs:
                cur.executemany(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES "
                                f"({', '.join(['%s'] * len(RUN_COLUMNS))})",
                                [tuple(row[c] for c in RUN_COLUMNS) for row in batch.runs])
            if batch.blobs:
                cur.executemany("INSERT INTO blobs (digest, data) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                list(batch.blobs.items()))
            if batch.events:
                cur.executemany("INSERT INTO events (run_id, seq, type, body, prev_hash, hash) "
                                "VALUES (%s, %s, %s, %s, %s, %s)", batch.events)
            if batch.seals:
                cur.executemany("INSERT INTO seals (run_id, seq, hash) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                                batch.seals)
            for listing in batch.listings:
                sql, args = _listing_update(listing)
                cur.execute(to_postgres(sql), args)

    def grant(self, role: str) -> list[str]:
        """Give `role` what an application needs and no more (see grant_statements); the
        statements run, as the tables' owner."""
        statements = grant_statements(self.schema, role)
        self._once_more(self._run_all, statements)
        return statements

    def _run_all(self, statements: list[str]) -> None:
        with self._conn.transaction():
            for statement in statements:
                self._conn.execute(statement)


def grant_statements(schema: str, role: str) -> list[str]:
    """The grants of an application role: INSERT and SELECT on events, seals and blobs
    (history is never changed), INSERT and SELECT on runs and UPDATE of its listing columns
    (a run's status, end and owner), and nothing else (no DELETE, TRUNCATE, ALTER: the role
    cannot drop the append-only triggers either, which only the tables' owner can)."""
    for name, what in ((schema, "schema"), (role, "role")):
        if not SCHEMA_NAME.match(name):
            raise ValueError(f"{name!r} is not a {what} name (letters, digits and _, at most 63)")
    s, r = _ident(schema), _ident(role)
    tables = ", ".join(f"{s}.{t}" for t in ("runs", "events", "seals", "blobs"))
    return [
        f"REVOKE ALL ON {tables} FROM {r}",
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT, INSERT ON {tables} TO {r}",
        f"GRANT UPDATE ({', '.join(LISTING_COLUMNS)}) ON {s}.runs TO {r}",
    ]


def _ident(name: str) -> str:
    """A name validated by SCHEMA_NAME, quoted as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
