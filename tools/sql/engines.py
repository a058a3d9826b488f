"""Read-only execution on SQLite, PostgreSQL and DuckDB, with timeouts that stop the
query and a cap on the rows returned.

A rejected or failed statement is a result with its error class, never an exception
that ends a run. Each engine enforces read-only itself as well:
- SQLite: the file opened `mode=ro`, an authorizer that allows reads only, a progress
  handler that interrupts the query at its deadline;
- PostgreSQL (psycopg): a READ ONLY transaction, always rolled back, `statement_timeout`;
- DuckDB: `read_only=True`, `enable_external_access=false`, interrupted at the deadline.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlparse

from pydantic import BaseModel, Field

from refinegraph.tools.sql.guard import RejectedSQL, check_read_only
from refinegraph.trace.redact import MASK, register_url_secrets

ErrorClass = Literal["rejected", "timeout", "syntax", "execution"]


class ExecResult(BaseModel):
    """What one statement did: rows, or the class and text of its error."""

    sql: str
    columns: list[str] = Field(default_factory=list)
    rows: list[tuple] = Field(default_factory=list)
    truncated: bool = False
    error_class: ErrorClass | None = None
    error: str | None = None
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error_class is None


@dataclass
class Database:
    """A database that model-written SQL may read, through `execute` only."""

    url: str
    engine: Literal["sqlite", "postgres", "duckdb"]
    target: str
    timeout_s: float = 5.0
    max_rows: int = 1000
    schema: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dialect(self) -> str:
        return self.engine

    async def execute(self, sql: str) -> ExecResult:
        """Check, then run `sql` read-only in a worker thread; never raises for bad SQL."""
        return await asyncio.to_thread(self.execute_sync, sql)

    def execute_sync(self, sql: str) -> ExecResult:
        started = time.perf_counter()
        try:
            check_read_only(sql, self.dialect)
        except RejectedSQL as exc:
            return ExecResult(sql=sql, error_class="rejected", error=exc.reason)
        result = _RUNNERS[self.engine](self, sql)
        result.elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    def introspect(self, query: str, args: tuple = ()) -> list[tuple]:
        """Our own catalog queries (schema serialization), on a read-only connection."""
        if self.engine == "sqlite":
            with _sqlite_connection(self.target) as conn:
                return conn.execute(query, args).fetchall()
        if self.engine == "duckdb":
            import duckdb
            with duckdb.connect(self.target, read_only=True) as conn:
                return conn.execute(query, list(args)).fetchall()
        import psycopg
        with psycopg.connect(self.target, autocommit=False) as conn:
            conn.read_only = True
            if self.schema:
                conn.execute("SELECT set_config('search_path', %s, true)", (self.schema,))
            rows = conn.execute(query.replace("?", "%s"), args).fetchall()
            conn.rollback()
            return rows


def connect(url_or_path: str | Path, *, timeout_s: float = 5.0, max_rows: int = 1000) -> Database:
    """A Database from a SQLAlchemy-style URL or a file path.

    `sqlite:///path.sqlite` or a path (.sqlite, .sqlite3, .db); `postgresql://user@host/db`
    (add `?schema=NAME` to read one schema); `duckdb:///path.duckdb` or a .duckdb path.
    """
    text = str(url_or_path)
    parsed = urlparse(text)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("postgresql", "postgres"):
        query = dict(part.split("=", 1) for part in parsed.query.split("&") if "=" in part)
        schema = query.pop("schema", None)
        rest = "&".join(f"{k}={v}" for k, v in query.items())
        register_url_secrets(text)  # its password is redacted wherever it appears (traces, logs)
        if parsed.password == MASK:  # read back from a trace (a replay, a resume from the input):
            # connect without it, so that libpq takes it from PGPASSWORD or ~/.pgpass
            parsed = parsed._replace(netloc=parsed.netloc.replace(f":{MASK}@", "@", 1))
        dsn = parsed._replace(scheme="postgresql", query=rest).geturl()
        return Database(text, "postgres", dsn, timeout_s, max_rows, schema)
    if scheme == "duckdb" or text.endswith(".duckdb"):
        path = text[len("duckdb:///"):] if scheme == "duckdb" else text
        return Database(text, "duckdb", _existing(path), timeout_s, max_rows)
    if scheme == "sqlite" or scheme == "" or Path(text).suffix in (".sqlite", ".sqlite3", ".db"):
        path = text[len("sqlite:///"):] if scheme == "sqlite" else text
        return Database(text, "sqlite", _existing(path), timeout_s, max_rows)
    raise ValueError(f"unsupported database {text!r}: use a SQLite path, postgresql://..., or duckdb:///...")


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no database file at {path}")
    return str(Path(path).resolve())


# -- SQLite ------------------------------------------------------------------------------

_SQLITE_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                 getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


def _authorize(action: int, *args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READS else sqlite3.SQLITE_DENY


def _sqlite_connection(path: str) -> sqlite3.Connection:
    # quoted: a '#', '?' or '%' in the path would otherwise end the path part of the URI, drop
    # mode=ro and make SQLite create (and write) a different, empty file
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _run_sqlite(db: Database, sql: str) -> ExecResult:
    deadline = time.monotonic() + db.timeout_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1  # a non-zero return interrupts the statement
        return 0

    conn = _sqlite_connection(db.target)
    try:
        conn.set_authorizer(_authorize)
        conn.set_progress_handler(progress, 1000)
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(db.max_rows + 1)
        columns = [d[0] for d in cursor.description or []]
        return ExecResult(sql=sql, columns=columns, rows=[tuple(r) for r in rows[: db.max_rows]],
                          truncated=len(rows) > db.max_rows)
    except sqlite3.Error as exc:
        if timed_out:
            return ExecResult(sql=sql, error_class="timeout", error=f"stopped after {db.timeout_s}s")
        kind = "rejected" if "not authorized" in str(exc) else (
            "syntax" if "syntax error" in str(exc) else "execution")
        return ExecResult(sql=sql, error_class=kind, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


# -- PostgreSQL --------------------------------------------------------------------------

def _run_postgres(db: Database, sql: str) -> ExecResult:
    import psycopg
    from psycopg import errors

    try:
        conn = psycopg.connect(db.target, autocommit=False, connect_timeout=max(1, int(db.timeout_s)))
    except psycopg.OperationalError as exc:
        return ExecResult(sql=sql, error_class="execution", error=f"cannot connect: {exc}".strip())
    try:
        conn.read_only = True
        conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{int(db.timeout_s * 1000)}ms",))
        if db.schema:
            conn.execute("SELECT set_config('search_path', %s, true)", (db.schema,))
        # prepared, so the extended protocol runs exactly one statement: the simple protocol would
        # run "SELECT 1; COMMIT; ..." and whatever follows the COMMIT outside the read-only
        # transaction, should anything stacked ever get past the guard
        cursor = conn.execute(sql.encode(), prepare=True)
        rows = cursor.fetchmany(db.max_rows + 1)
        columns = [d.name for d in cursor.description or []]
        return ExecResult(sql=sql, columns=columns, rows=[tuple(r) for r in rows[: db.max_rows]],
                          truncated=len(rows) > db.max_rows)
    except errors.QueryCanceled:
        return ExecResult(sql=sql, error_class="timeout", error=f"stopped after {db.timeout_s}s")
    except errors.ReadOnlySqlTransaction as exc:
        return ExecResult(sql=sql, error_class="rejected", error=f"read-only transaction: {exc}")
    except errors.SyntaxError as exc:
        return ExecResult(sql=sql, error_class="syntax", error=str(exc).strip())
    except psycopg.Error as exc:
        return ExecResult(sql=sql, error_class="execution", error=f"{type(exc).__name__}: {exc}".strip())
    finally:
        conn.rollback()
        conn.close()


# -- DuckDB ------------------------------------------------------------------------------

def _run_duckdb(db: Database, sql: str) -> ExecResult:
    import duckdb

    conn = duckdb.connect(db.target, read_only=True, config={"enable_external_access": False})
    timer = threading.Timer(db.timeout_s, conn.interrupt)
    timer.start()
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(db.max_rows + 1)
        columns = [d[0] for d in cursor.description or []]
        return ExecResult(sql=sql, columns=columns, rows=[tuple(r) for r in rows[: db.max_rows]],
                          truncated=len(rows) > db.max_rows)
    except duckdb.InterruptException:
        return ExecResult(sql=sql, error_class="timeout", error=f"stopped after {db.timeout_s}s")
    except duckdb.ParserException as exc:
        return ExecResult(sql=sql, error_class="syntax", error=str(exc))
    except duckdb.Error as exc:
        kind = "rejected" if "read-only" in str(exc).lower() or "external access" in str(exc).lower() else "execution"
        return ExecResult(sql=sql, error_class=kind, error=f"{type(exc).__name__}: {exc}")
    finally:
        timer.cancel()
        conn.close()


# -- dispatch ----------------------------------------------------------------------------

_RUNNERS: dict[str, Callable[[Database, str], ExecResult]] = {
    "sqlite": _run_sqlite, "postgres": _run_postgres, "duckdb": _run_duckdb}


def execute_unchecked(db: Database, sql: str) -> ExecResult:
    """Run `sql` on the engine's own read-only execution with the guard skipped: only for the
    tests and benches that prove the second line of defence holds alone. Never model SQL."""
    return _RUNNERS[db.engine](db, sql)
