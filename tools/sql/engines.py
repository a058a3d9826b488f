"""Read-only execution on SQLite, PostgreSQL and DuckDB, under hard limits on time, memory
and result size.

A rejected or failed statement is a result with its error class, never an exception
that ends a run, and never `ok`. Each engine enforces read-only itself as well, and the
limits are enforced from outside the engine's own step counting:
- SQLite: the file opened `mode=ro`, an authorizer that allows reads only; a watchdog
  timer calls `interrupt()` at the deadline; `SQLITE_LIMIT_LENGTH` caps every string and
  blob at the byte cap (so `zeroblob(10**9)` fails inside SQLite before it is allocated),
  and `cache_size` bounds the page cache and sorters;
- PostgreSQL (psycopg): a READ ONLY transaction, always rolled back, `statement_timeout`,
  `work_mem` (and `temp_file_limit` where the role may set it: `refinegraph sql grant`
  sets it on the role); superusers and roles that can write are refused unless the config
  says so (`[sql] allow_privileged_postgres_role`); a `?schema=` that does not exist is an error;
- DuckDB: `read_only=True`, `enable_external_access=false`, `memory_limit`, one thread,
  no temporary files, interrupted at the deadline by a watchdog.

Rows are read incrementally and their bytes counted as they arrive: a result over
`max_bytes` is refused (error class "too_large") once the cap is passed, before the rest
is fetched. On PostgreSQL and DuckDB the statement is wrapped so the engine itself
refuses any one row over the cap before it is sent (`_row_capped`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlparse

import sqlglot
from pydantic import BaseModel, Field
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from refinegraph.tools.sql.guard import RejectedSQL, check_read_only
from refinegraph.trace.redact import MASK, register_url_secrets

ErrorClass = Literal["rejected", "timeout", "syntax", "execution", "too_large", "memory"]
"""rejected: the guard or the engine's read-only mode refused it; timeout: stopped at the
deadline; too_large: the result (or one value) passed the byte cap; memory: the engine's
memory limit stopped it."""

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_BYTES = 8 << 20
DEFAULT_MEMORY_MB = 256
_FETCH_BATCH = 64
"""Rows fetched at a time: the bytes are counted between batches."""
_TOO_LARGE_MARK = "refinegraph: a row is larger than the byte cap"


class ExecResult(BaseModel):
    """What one statement did: rows, or the class and text of its error."""

    sql: str
    columns: list[str] = Field(default_factory=list)
    rows: list[tuple] = Field(default_factory=list)
    truncated: bool = False
    error_class: ErrorClass | None = None
    error: str | None = None
    elapsed_ms: float = 0.0
    result_bytes: int = 0
    """Bytes of the rows returned, as counted against max_bytes."""

    @property
    def ok(self) -> bool:
        return self.error_class is None


class PreflightError(ValueError):
    """The database cannot be used as configured: unreachable, a schema that does not exist,
    or a PostgreSQL role with more privilege than reading needs."""


@dataclass
class Database:
    """A database that model-written SQL may read, through `execute` only."""

    url: str
    engine: Literal["sqlite", "postgres", "duckdb"]
    target: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_rows: int = DEFAULT_MAX_ROWS
    schema: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    memory_mb: int = DEFAULT_MEMORY_MB
    allow_privileged_role: bool = False
    """PostgreSQL: run even as a superuser or a role that can write (config
    `[sql] allow_privileged_postgres_role`); otherwise such a connection is refused."""
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
            return ExecResult(sql=_printable(sql), error_class="rejected", error=exc.reason)
        result = _RUNNERS[self.engine](self, sql)
        result.elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    def preflight(self) -> None:
        """Raise PreflightError when this database cannot be used as configured (PostgreSQL:
        unreachable, schema missing, role too privileged); SQLite and DuckDB: not readable."""
        if self.engine == "postgres":
            import psycopg

            try:
                timeout = max(1, int(self.timeout_s))
                with psycopg.connect(self.target, autocommit=False, connect_timeout=timeout) as conn:
                    problem = _pg_problem(conn, self)
                    conn.rollback()
            except psycopg.Error as exc:
                raise PreflightError(f"cannot connect: {_first_line(exc)}") from None
            if problem:
                raise PreflightError(problem)
            return
        try:  # SQLite opens any file; reading its schema is what fails on one that is not a database
            self.introspect("SELECT COUNT(*) FROM sqlite_master" if self.engine == "sqlite" else "SELECT 1")
        except Exception as exc:  # noqa: BLE001 - each engine's own error type: all mean "not readable"
            raise PreflightError(f"not a readable {self.engine} database: {_first_line(exc)}") from None

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


def connect(url_or_path: str | Path, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_rows: int = DEFAULT_MAX_ROWS,
            max_bytes: int = DEFAULT_MAX_BYTES, memory_mb: int = DEFAULT_MEMORY_MB,
            allow_privileged_role: bool = False) -> Database:
    """A Database from a SQLAlchemy-style URL or a file path.

    SQLite: `sqlite:///relative.db`, `sqlite:////abs/path.db` or a path (.sqlite, .sqlite3,
    .db); PostgreSQL: `postgresql://user@host/db` (add `?schema=NAME` to read one schema);
    DuckDB: `duckdb:///relative.duckdb`, `duckdb:////abs/path.duckdb` or a .duckdb path.
    """
    text = str(url_or_path)
    parsed = urlparse(text)
    scheme = parsed.scheme.split("+")[0].lower()
    limits = {"timeout_s": timeout_s, "max_rows": max_rows, "max_bytes": max_bytes, "memory_mb": memory_mb,
              "allow_privileged_role": allow_privileged_role}
    if scheme in ("postgresql", "postgres"):
        query = dict(part.split("=", 1) for part in parsed.query.split("&") if "=" in part)
        schema = query.pop("schema", None)
        rest = "&".join(f"{k}={v}" for k, v in query.items())
        register_url_secrets(text)  # its password is redacted wherever it appears (traces, logs)
        if parsed.password == MASK:  # read back from a trace (a replay, a resume from the input):
            # connect without it, so that libpq takes it from PGPASSWORD or ~/.pgpass
            parsed = parsed._replace(netloc=parsed.netloc.replace(f":{MASK}@", "@", 1))
        dsn = parsed._replace(scheme="postgresql", query=rest).geturl()
        return Database(text, "postgres", dsn, schema=unquote(schema) if schema else None, **limits)
    if scheme == "duckdb" or (not scheme and text.endswith(".duckdb")):
        path = _url_path(text, "duckdb") if scheme == "duckdb" else text
        return Database(text, "duckdb", _existing(path), **limits)
    if scheme == "sqlite" or scheme == "" or Path(text).suffix in (".sqlite", ".sqlite3", ".db"):
        path = _url_path(text, "sqlite") if scheme == "sqlite" else text
        return Database(text, "sqlite", _existing(path), **limits)
    raise ValueError(f"unsupported database {text!r}: use a SQLite path, postgresql://..., or duckdb:///...")


def _url_path(url: str, scheme: str) -> str:
    """The file of a SQLAlchemy file URL: `x:///rel.db` is relative, `x:////abs.db` absolute
    (three slashes, then the path as written)."""
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise ValueError(f"{url!r}: a {scheme} URL is {scheme}:///relative/path or {scheme}:////absolute/path")
    path = unquote(rest[3:])
    if not path:
        raise ValueError(f"{url!r}: the URL names no file")
    return path


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no database file at {path}")
    return str(Path(path).resolve())


def _printable(sql: str) -> str:
    """The statement as a result may carry it (a lone surrogate would break every writer)."""
    return sql.encode("utf-8", "backslashreplace").decode("utf-8")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _value_bytes(value: Any) -> int:
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value)
    return 8


class _Collector:
    """Rows taken batch by batch until the row cap or the byte cap: a result over the byte
    cap is refused as soon as the count passes it, and the rest is never fetched."""

    def __init__(self, db: Database):
        self.db = db
        self.rows: list[tuple] = []
        self.bytes = 0
        self.truncated = False
        self.over = False

    def take(self, fetch: Callable[[int], Iterable[Any]]) -> None:
        while len(self.rows) <= self.db.max_rows:
            batch = fetch(min(_FETCH_BATCH, self.db.max_rows + 1 - len(self.rows)))
            if not batch:
                return
            for row in batch:
                if len(self.rows) == self.db.max_rows:
                    self.truncated = True
                    return
                self.bytes += sum(_value_bytes(v) for v in row)
                if self.bytes > self.db.max_bytes:
                    self.over = True
                    self.rows = []
                    return
                self.rows.append(tuple(row))

    def result(self, sql: str, columns: list[str]) -> ExecResult:
        if self.over:
            return _too_large(sql, self.db)
        return ExecResult(sql=sql, columns=columns, rows=self.rows, truncated=self.truncated, result_bytes=self.bytes)


def _too_large(sql: str, db: Database) -> ExecResult:
    return ExecResult(sql=sql, error_class="too_large",
                      error=f"the result is larger than the byte cap ({db.max_bytes} bytes); "
                            "select fewer or smaller columns, or aggregate")


def _timeout(sql: str, db: Database) -> ExecResult:
    return ExecResult(sql=sql, error_class="timeout", error=f"stopped after {db.timeout_s}s")


class _Watchdog:
    """Calls `stop` once the deadline passes, from its own thread: the engine's step counter
    is not trusted to notice (one SQLite opcode, or one DuckDB function, can run for seconds)."""

    def __init__(self, timeout_s: float, stop: Callable[[], None]):
        self.fired = False
        self._stop = stop
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                self._stop()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:  # after this, stop() is never called on a closed connection
            self._done = True
        self._timer.cancel()


def _statement_body(sql: str, dialect: str) -> str:
    """`sql` without its trailing semicolons and comments, so it can be wrapped in a subquery."""
    try:
        tokens = [t for t in sqlglot.tokenize(sql, read=dialect) if t.token_type != TokenType.SEMICOLON]
    except SqlglotError:
        return sql
    return sql[: tokens[-1].end + 1] if tokens else sql


def _row_capped(sql: str, db: Database) -> str:
    """The statement wrapped so the engine refuses any row (DuckDB: any value) over the byte
    cap before sending it (a single 300 MB value would otherwise be in this process before it could be counted).
    Rows keep their order and columns: only a filter that raises is added."""
    body = _statement_body(sql, db.dialect)
    if db.engine == "duckdb":
        # COLUMNS(*) expands to one test per column: each value is measured where it is, uncopied
        check = (f"CASE WHEN strlen(CAST(COLUMNS(*) AS VARCHAR)) > {int(db.max_bytes)} "
                 f"THEN error('{_TOO_LARGE_MARK}') END")
    else:  # PostgreSQL has no error() in plain SQL: a cast that must fail carries the message
        # (the size in the text keeps the planner from folding the cast, and failing, up front)
        check = (f"CASE WHEN octet_length(rg_q::text) > {int(db.max_bytes)} "
                 f"THEN CAST('{_TOO_LARGE_MARK}: ' || octet_length(rg_q::text) AS int) END")
    return f"SELECT rg_q.* FROM (\n{body}\n) AS rg_q WHERE {check} IS NULL"


# -- SQLite ------------------------------------------------------------------------------

_SQLITE_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                 getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


def _authorize(action: int, *args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READS else sqlite3.SQLITE_DENY


def _sqlite_connection(path: str) -> sqlite3.Connection:
    """Read-only and query-only; `check_same_thread=False` so the watchdog may interrupt it."""
    # quoted: a '#', '?' or '%' in the path would otherwise end the path part of the URI, drop
    # mode=ro and make SQLite create (and write) a different, empty file
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _run_sqlite(db: Database, sql: str, wrap: bool = True) -> ExecResult:
    conn = _sqlite_connection(db.target)
    watchdog = _Watchdog(db.timeout_s, conn.interrupt)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(1, db.max_bytes))  # no string or blob past the cap
        conn.execute(f"PRAGMA cache_size = -{int(db.memory_mb) * 1024}")  # KiB: the page cache and sorters
        conn.set_authorizer(_authorize)
        with watchdog:
            cursor = conn.execute(sql)
            collector = _Collector(db)
            collector.take(cursor.fetchmany)
            columns = [d[0] for d in cursor.description or []]
        return collector.result(sql, columns)
    except sqlite3.Error as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if watchdog.fired or name == "SQLITE_INTERRUPT":
            return _timeout(sql, db)
        if name == "SQLITE_TOOBIG":
            return ExecResult(sql=sql, error_class="too_large",
                              error=f"a value is larger than the byte cap ({db.max_bytes} bytes)")
        if name == "SQLITE_NOMEM":
            return ExecResult(sql=sql, error_class="memory", error="SQLite ran out of memory")
        kind = "rejected" if "not authorized" in str(exc) else (
            "syntax" if "syntax error" in str(exc) else "execution")
        return ExecResult(sql=sql, error_class=kind, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


# -- PostgreSQL --------------------------------------------------------------------------

_PG_ROLE_QUERY = """
SELECT r.rolsuper, r.rolbypassrls,
  EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
            AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')),
  EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg_toast%%' AND has_schema_privilege(n.oid, 'CREATE')),
  has_database_privilege(current_database(), 'CREATE'),
  %(schema)s::text IS NULL OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s::text)
FROM pg_roles r WHERE r.rolname = current_user
"""


def _pg_problem(conn: Any, db: Database) -> str | None:
    """Why this connection may not run model SQL: a schema that does not exist, or (unless
    allowed in so many words) a superuser or a role that can write or create."""
    row = conn.execute(_PG_ROLE_QUERY, {"schema": db.schema}).fetchone()
    superuser, bypassrls, writes, creates, creates_schemas, schema_exists = row
    if not schema_exists:
        return f"schema {db.schema!r} does not exist in this database"
    if db.allow_privileged_role:
        return None
    powers = [what for what, held in (("is a superuser", superuser), ("bypasses row security", bypassrls),
                                      ("can write to tables", writes), ("can create objects in a schema", creates),
                                      ("can create schemas", creates_schemas)) if held]
    if powers:
        return (f"the connection's role {', '.join(powers)}: model SQL runs only as a read-only role "
                "(make one with `refinegraph sql grant`), or set [sql] allow_privileged_postgres_role = true")
    return None


def _pg_setup(conn: Any, db: Database) -> str | None:
    """Limits on this transaction; a reason to refuse, or None."""
    conn.read_only = True
    problem = _pg_problem(conn, db)
    if problem:
        return problem
    conn.execute("SELECT set_config('statement_timeout', %s, true), set_config('work_mem', %s, true)",
                 (f"{int(db.timeout_s * 1000)}ms", f"{max(64, db.memory_mb * 1024 // 4)}kB"))
    if conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        # only superusers may set it per session; `refinegraph sql grant` sets it on its role
        conn.execute("SELECT set_config('temp_file_limit', %s, true)", (f"{db.memory_mb * 1024}kB",))
    if db.schema:
        conn.execute("SELECT set_config('search_path', %s, true)", (db.schema,))
    return None


def _run_postgres(db: Database, sql: str, wrap: bool = True) -> ExecResult:
    import psycopg
    from psycopg import errors

    try:
        conn = psycopg.connect(db.target, autocommit=False, connect_timeout=max(1, int(db.timeout_s)))
    except psycopg.OperationalError as exc:
        return ExecResult(sql=sql, error_class="execution", error=f"cannot connect: {_first_line(exc)}")
    try:
        problem = _pg_setup(conn, db)
        if problem:
            return ExecResult(sql=sql, error_class="rejected", error=problem)
        # prepared, so the extended protocol runs exactly one statement: the simple protocol would
        # run "SELECT 1; COMMIT; ..." and whatever follows the COMMIT outside the read-only
        # transaction, should anything stacked ever get past the guard. A server-side cursor:
        # rows come in batches, counted as they arrive.
        # (unwrapped, for execute_unchecked: a plain prepared statement, as DECLARE would refuse a
        # write as a syntax error before the read-only transaction could)
        with conn.cursor(name="refinegraph_q") if wrap else conn.cursor() as cursor:
            if wrap:
                cursor.execute(_row_capped(sql, db).encode())
            else:
                cursor.execute(sql.encode(), prepare=True)
            collector = _Collector(db)
            collector.take(cursor.fetchmany)
            columns = [d.name for d in cursor.description or []]
        return collector.result(sql, columns)
    except errors.QueryCanceled:
        return _timeout(sql, db)
    except (errors.OutOfMemory, errors.ConfigurationLimitExceeded, errors.DiskFull) as exc:
        return ExecResult(sql=sql, error_class="memory", error=f"{type(exc).__name__}: {_first_line(exc)}")
    except errors.InvalidTextRepresentation as exc:
        if _TOO_LARGE_MARK in str(exc):
            return _too_large(sql, db)
        return ExecResult(sql=sql, error_class="execution", error=f"{type(exc).__name__}: {exc}".strip())
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

def _run_duckdb(db: Database, sql: str, wrap: bool = True) -> ExecResult:
    import duckdb

    conn = duckdb.connect(db.target, read_only=True, config={
        "enable_external_access": False, "memory_limit": f"{int(db.memory_mb)}MB", "threads": 1,
        "max_temp_directory_size": "0B"})
    try:
        with _Watchdog(db.timeout_s, conn.interrupt) as watchdog:
            cursor = conn.execute(_row_capped(sql, db) if wrap else sql)
            collector = _Collector(db)
            collector.take(cursor.fetchmany)
            columns = [d[0] for d in cursor.description or []]
        return collector.result(sql, columns)
    except duckdb.InterruptException:
        return _timeout(sql, db)
    except duckdb.OutOfMemoryException as exc:
        return ExecResult(sql=sql, error_class="memory", error=f"DuckDB's memory limit ({db.memory_mb} MB): "
                                                                 f"{_first_line(exc)}")
    except duckdb.ParserException as exc:
        return ExecResult(sql=sql, error_class="syntax", error=str(exc))
    except duckdb.Error as exc:
        if _TOO_LARGE_MARK in str(exc):
            return _too_large(sql, db)
        if watchdog.fired:
            return _timeout(sql, db)
        kind = "rejected" if "read-only" in str(exc).lower() or "external access" in str(exc).lower() else "execution"
        return ExecResult(sql=sql, error_class=kind, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


# -- dispatch ----------------------------------------------------------------------------

_RUNNERS: dict[str, Callable[..., ExecResult]] = {
    "sqlite": _run_sqlite, "postgres": _run_postgres, "duckdb": _run_duckdb}


def execute_unchecked(db: Database, sql: str) -> ExecResult:
    """Run `sql` on the engine's own read-only execution with the guard skipped: only for the
    tests and benches that prove the second line of defence holds alone. Never model SQL.
    The statement runs as written (not wrapped for the per-row byte cap), so what refuses a
    write here is the engine's read-only mode, not a syntax error of the wrapper."""
    return _RUNNERS[db.engine](db, sql, wrap=False)
