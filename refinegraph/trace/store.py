"""Trace stores: append-only, hash-chained events and content-addressed blobs, in a database
used by the book.

A store is chosen by its location (`open_store`): a file path or `sqlite:///path` for SQLite
(the default, one file in WAL mode), `postgresql://...` for PostgreSQL (shared by serve
replicas, batch workers and hosts; refinegraph.trace.postgres). Both hold the same tables
and run the same SQL, written once here in `BaseTraceStore`; a store class adds only its
connection, schema and placeholder style.

What is guaranteed, and by whom:
- Atomic commit is the database's: a batch of rows (a run's listing, events, blobs, seal)
  is one transaction, all or nothing, whatever happens to the process (kill -9, a crash, a
  full disk: the transaction is rolled back and its rows stay held by the writer for a
  later try). Nothing here re-implements or repairs after the database.
- SQLite runs in WAL mode with `synchronous=NORMAL`: a committed transaction survives any
  crash of the process; after a power cut the last transactions may be rolled back, never
  half-applied (the file stays consistent). `synchronous=FULL` makes every commit survive
  a power cut too, at an fsync per commit (`TraceStore(path, synchronous="FULL")`).
- History is append-only: triggers refuse UPDATE and DELETE on events and seals (and on
  PostgreSQL, the documented application role has INSERT and SELECT only). Anything that
  goes around the database is found by `refinegraph trace verify`: each event's hash
  covers its body and its predecessor's hash, seals are kept in a table of their own.
- No process that holds a connection opens the database files with anything but SQLite
  (closing any other descriptor on them would drop the process's POSIX locks: "How To
  Corrupt An SQLite Database File", 2.2). Copy a live store with `refinegraph trace copy`
  (through the database), never with `cp`.

When a commit happens (see TraceWriter): a model call's `llm_call` event is committed before
the node that made the call goes on, so a crash never re-pays a finished call; a run's start,
resume and end are committed before the runner goes on; everything else with the next of
those. Each such commit is `await writer.commit()`: the runs of one event loop that commit
before the loop's next turn share one transaction (group commit).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinegraph.events import Event, utcnow
from refinegraph.sqlite_files import setup_lock
from refinegraph.trace.chain import content_digest, event_body, event_hash, genesis_hash, redacted_json
from refinegraph.trace.redact import redact_text

BUSY_TIMEOUT_S = 30.0
SCHEMA_VERSION = 1

RUN_COLUMNS = ("run_id", "graph", "input_preview", "created_at", "status", "stop_reason", "answer_preview",
               "sealed_hash", "replay_of", "owner")
EVENT_COLUMNS = ("run_id", "seq", "type", "body", "prev_hash", "hash")
RUN_STATUSES = ("running", "finished", "error", "interrupted", "awaiting_approval")
"""A run's status in its listing: `running` (or its process died: resume it), `finished`
and `error` (sealed), `interrupted` (stopped by a signal or a cancelled request: resume it),
`awaiting_approval` (paused for a human decision)."""

SQLITE_SCHEMA = """
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
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS seals (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TRIGGER IF NOT EXISTS seals_no_update BEFORE UPDATE ON seals
BEGIN SELECT RAISE(ABORT, 'seals are append-only'); END;
CREATE TRIGGER IF NOT EXISTS seals_no_delete BEFORE DELETE ON seals
BEGIN SELECT RAISE(ABORT, 'seals are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'trace events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'trace events are append-only'); END;
"""

_log = logging.getLogger(__name__)


class TraceStoreError(RuntimeError):
    """The store cannot be opened or read as a trace store (it names the store and why)."""


@dataclass
class Batch:
    """Rows to commit in one transaction: new run listings, blobs, events, seals, and
    listing updates (status, stop reason, answer, seal hash, owner)."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    events: list[tuple[str, int, str, str, str, str]] = field(default_factory=list)
    seals: list[tuple[str, int, str]] = field(default_factory=list)
    listings: list[dict[str, Any]] = field(default_factory=list)
    """Each: run_id and the columns to set (any of status, stop_reason, answer_preview,
    sealed_hash, owner)."""

    def __bool__(self) -> bool:
        return bool(self.runs or self.blobs or self.events or self.seals or self.listings)

    def extend(self, other: Batch) -> None:
        self.runs += other.runs
        self.blobs.update(other.blobs)
        self.events += other.events
        self.seals += other.seals
        self.listings += other.listings


def new_run_row(run_id: str, graph: str, input_preview: str, replay_of: str | None = None,
                owner: str | None = None) -> dict[str, Any]:
    """A run's listing as it starts."""
    return {"run_id": run_id, "graph": graph, "input_preview": input_preview[:200], "created_at": utcnow(),
            "status": "running", "stop_reason": None, "answer_preview": None, "sealed_hash": None,
            "replay_of": replay_of, "owner": owner}


class _Group:
    """Writers of one event loop waiting for the next group commit."""

    def __init__(self) -> None:
        self.waiting: list[tuple[TraceWriter, asyncio.Future]] = []
        self.scheduled = False


class BaseTraceStore:
    """What every trace store does, in SQL both databases run (`?` placeholders, which a
    store class translates). Subclasses provide `_connect_query`, `_apply` and `location`."""

    location: str
    """Where the store is, for messages (a file path, or a URL without its password)."""
    kind: str = "base"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._groups: dict[asyncio.AbstractEventLoop, _Group] = {}

    # -- to provide -----------------------------------------------------------------------

    def _query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self, batch: Batch) -> None:  # pragma: no cover - abstract
        """Commit `batch` in one transaction, or raise with nothing committed."""
        raise NotImplementedError

    def _execute(self, sql: str, args: tuple = ()) -> int:  # pragma: no cover - abstract
        """Run one statement in a transaction of its own; the number of rows it changed."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def integrity_problems(self) -> list[str]:
        """What the database's own check finds wrong with its files (none by default)."""
        return []

    def __enter__(self) -> BaseTraceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """All of `batch` or nothing, now."""
        if batch:
            with self._lock:
                self._apply(batch)

    async def commit_group(self, writer: TraceWriter) -> None:
        """Commit what `writer` holds together with whatever other writers of this event loop
        hand in before the loop's next turn: one transaction for many concurrent runs."""
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = _Group()
        future = loop.create_future()
        group.waiting.append((writer, future))
        if not group.scheduled:
            group.scheduled = True
            loop.call_soon(self._commit_waiting, loop)
        await future

    def _commit_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        group = self._groups.pop(loop)
        taken = [(writer, writer.take(), future) for writer, future in group.waiting]
        merged = Batch()
        for _, batch, _ in taken:
            merged.extend(batch)
        try:
            self.commit(merged)
        except Exception:  # noqa: BLE001 - one run's rows may be at fault: each is committed on its own below
            for writer, batch, future in taken:
                try:
                    self.commit(batch)
                except Exception as exc:  # noqa: BLE001 - handed to the run that waits for this commit
                    writer.give_back(batch)
                    if not future.done():
                        future.set_exception(exc)
                    continue
                if not future.done():
                    future.set_result(None)
            return
        for _, _, future in taken:
            if not future.done():
                future.set_result(None)

    def create_run(self, run_id: str, graph: str, input_preview: str, replay_of: str | None = None,
                   owner: str | None = None) -> None:
        self.commit(Batch(runs=[new_run_row(run_id, graph, input_preview, replay_of, owner)]))

    def set_status(self, run_id: str, status: str, *, only_if: str | None = None) -> bool:
        """Change an unsealed run's listed status (interrupted, awaiting_approval, running);
        `only_if`: only when its status is that now. Whether the row changed."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; known: {', '.join(RUN_STATUSES)}")
        sql, args = "UPDATE runs SET status=? WHERE run_id=? AND sealed_hash IS NULL", (status, run_id)
        if only_if is not None:
            sql, args = f"{sql} AND status=?", (*args, only_if)
        return self._execute(sql, args) == 1

    def claim_run(self, run_id: str, seen_owner: str | None, owner: str, *, force: bool = False,
                  status: str | None = None) -> bool:
        """Take an unfinished run over for resuming: refused while its owner process is alive
        on this host (unless forced, or the run is listed as interrupted or awaiting
        approval: its owner let it go), and atomic against a concurrent claim."""
        if not force and status not in ("interrupted", "awaiting_approval") and _owner_alive(seen_owner):
            return False
        if seen_owner is None:
            sql, args = ("UPDATE runs SET owner=?, status='running', sealed_hash=NULL "
                         "WHERE run_id=? AND owner IS NULL"), (owner, run_id)
        else:
            sql, args = ("UPDATE runs SET owner=?, status='running', sealed_hash=NULL "
                         "WHERE run_id=? AND owner=?"), (owner, run_id, seen_owner)
        return self._execute(sql, args) == 1

    # -- runs -----------------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return rows[0] if rows else None

    def find_run(self, prefix: str) -> str:
        """A run id from a unique prefix of it."""
        if not prefix.strip():
            raise KeyError("give a run id (or a unique prefix of one)")
        rows = self._query("SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY created_at",
                           (len(prefix), prefix))
        if not rows:
            raise KeyError(f"no run {prefix!r} in {self.location}")
        if len(rows) > 1 and rows[0]["run_id"] != prefix:
            raise KeyError(f"{prefix!r} names {len(rows)} runs; give more of the id")
        return rows[0]["run_id"]

    def all_runs(self) -> list[dict[str, Any]]:
        """Every run row, oldest first (copying stores walks them all)."""
        return self._query("SELECT * FROM runs ORDER BY created_at, run_id")

    def count_runs(self) -> int:
        """How many runs the store holds (one COUNT, not a walk of every row)."""
        return int(self._query("SELECT COUNT(*) AS n FROM runs")[0]["n"])

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._query(
            "SELECT r.*, (SELECT COUNT(*) FROM events e WHERE e.run_id=r.run_id) AS events "
            "FROM runs r ORDER BY created_at DESC, run_id DESC LIMIT ?", (limit,))

    def seals(self, run_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT seq, hash FROM seals WHERE run_id=? ORDER BY seq", (run_id,))

    # -- events ---------------------------------------------------------------------------

    def last_link(self, run_id: str) -> tuple[int, str]:
        """(next seq, hash of the last event) for appending to a run's chain."""
        rows = self._query("SELECT seq, hash FROM events WHERE run_id=? ORDER BY seq DESC LIMIT 1", (run_id,))
        if not rows:
            return 0, genesis_hash(run_id)
        return rows[0]["seq"] + 1, rows[0]["hash"]

    def raw_events(self, run_id: str) -> list[dict[str, Any]]:
        """Rows as stored (body text, hashes), in sequence order."""
        return self._query("SELECT * FROM events WHERE run_id=? ORDER BY seq", (run_id,))

    def events(self, run_id: str, types: set[str] | None = None) -> list[dict[str, Any]]:
        """Event bodies decoded, in sequence order."""
        out = []
        for row in self.raw_events(run_id):
            if types is None or row["type"] in types:
                out.append(json.loads(row["body"]))
        return out

    def iter_export(self, run_id: str) -> Iterator[str]:
        """JSONL lines: each event's body with its hashes."""
        for row in self.raw_events(run_id):
            body = json.loads(row["body"])
            body["prev_hash"], body["hash"] = row["prev_hash"], row["hash"]
            yield json.dumps(body, ensure_ascii=False)

    # -- blobs ----------------------------------------------------------------------------

    def get_blob(self, digest: str) -> Any:
        """A blob's value, after checking that its content still hashes to its address."""
        data = self.blob_bytes(digest)
        if data is None:
            raise TraceStoreError(f"blob {digest} is missing from {self.location}")
        if content_digest(data) != digest:
            raise TraceStoreError(f"blob {digest} in {self.location} was altered")
        return json.loads(data)

    def blob_bytes(self, digest: str) -> bytes | None:
        rows = self._query("SELECT data FROM blobs WHERE digest=?", (digest,))
        return bytes(rows[0]["data"]) if rows else None


class TraceStore(BaseTraceStore):
    """A trace store in one SQLite file, in WAL mode (created with its schema on first open).

    Several processes and threads may read and write at once: SQLite's locks serialise the
    writers (each waits up to BUSY_TIMEOUT_S), readers never block them.
    """

    kind = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL"):
        super().__init__()
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise TraceStoreError(f"{self.path}: not a usable trace store: {exc}") from exc
        try:
            self._prepare()
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise TraceStoreError(f"{self.path}: not a usable trace store: {exc}") from exc

    def _prepare(self) -> None:
        """WAL mode and the schema, made once by whichever process comes first: the check is
        a read; the setup runs under the sidecar setup lock (refinegraph.sqlite_files) and
        BEGIN IMMEDIATE. The lock is there for the switch to WAL: two first opens that both
        find the file in rollback mode both try to switch it, and SQLite answers one of them
        "database is locked" at once, without its busy timeout, when waiting could deadlock
        (the likely cause of a CI run where a fresh store opened by 4 processes held 3 runs)."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        with setup_lock(self.path):
            self._set_up()

    def _set_up(self) -> None:
        if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            if tables and version != SCHEMA_VERSION:
                raise TraceStoreError(f"{self.path}: not a refinegraph trace store of schema {SCHEMA_VERSION} "
                                      f"(found user_version {version}); use another REFINEGRAPH_HOME")
            if version != SCHEMA_VERSION:
                for statement in _statements(SQLITE_SCHEMA):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def integrity_problems(self) -> list[str]:
        """SQLite's `quick_check` of every page (what `trace verify` runs first)."""
        try:
            rows = self._query("PRAGMA quick_check")
        except TraceStoreError as exc:
            return [str(exc)]
        problems = [str(next(iter(row.values()))) for row in rows]
        return [] if problems == ["ok"] else problems

    def _apply(self, batch: Batch) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if batch.runs:
                    db.executemany(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES "
                                   f"({', '.join('?' * len(RUN_COLUMNS))})",
                                   [tuple(row[c] for c in RUN_COLUMNS) for row in batch.runs])
                if batch.blobs:
                    db.executemany("INSERT OR IGNORE INTO blobs (digest, data) VALUES (?, ?)", batch.blobs.items())
                if batch.events:
                    db.executemany("INSERT INTO events (run_id, seq, type, body, prev_hash, hash) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", batch.events)
                if batch.seals:
                    db.executemany("INSERT OR IGNORE INTO seals (run_id, seq, hash) VALUES (?, ?, ?)", batch.seals)
                for listing in batch.listings:
                    db.execute(*_listing_update(listing))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise TraceStoreError(f"{self.path}: the commit failed and was rolled back: {exc}") from exc

    def _execute(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.Error as exc:
                raise TraceStoreError(f"{self.path}: {exc}") from exc

    def _query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, args)
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row)) for row in cursor.fetchall()]
            except sqlite3.Error as exc:
                raise TraceStoreError(f"{self.path}: cannot read the store: {exc}") from exc


def _statements(script: str) -> list[str]:
    """The statements of a schema script (triggers hold `;` inside BEGIN ... END)."""
    out, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            out.append(text)
            current = []
    return out


def _listing_update(listing: dict[str, Any]) -> tuple[str, tuple]:
    columns = [c for c in ("status", "stop_reason", "answer_preview", "sealed_hash", "owner") if c in listing]
    return (f"UPDATE runs SET {', '.join(f'{c}=?' for c in columns)} WHERE run_id=?",
            (*(listing[c] for c in columns), listing["run_id"]))


# The optional parts built on this module (PostgreSQL needs psycopg, live export needs
# opentelemetry) import it; it knows them only by name, loaded when asked for, as the
# registry knows graphs, so no import runs in a circle.
POSTGRES_STORE = "refinegraph.trace.postgres:PostgresTraceStore"
OTEL_LIVE = "refinegraph.trace.otel:enable_live"


def _by_name(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def open_store(location: str | Path, *, schema: str = "refinegraph", synchronous: str = "NORMAL") -> BaseTraceStore:
    """The trace store at `location`: `postgresql://...` (or `postgres://`; in `schema` unless
    the URL sets a search path), `sqlite:///path`, or a file path (SQLite, committing with
    `synchronous`)."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return _by_name(POSTGRES_STORE)(text, schema=schema)
    if text.startswith("sqlite:"):  # as SQLAlchemy writes it: sqlite:///relative.db, sqlite:////abs/path.db
        if not text.startswith("sqlite:///") or len(text) == len("sqlite:///"):
            raise TraceStoreError(f"{text!r}: a SQLite store URL is sqlite:///relative/path or sqlite:////abs/path")
        text = text[len("sqlite:///"):]
    return TraceStore(text, synchronous=synchronous)


def seal_batch(run_id: str, seq: int, sealed_hash: str, status: str, stop_reason: str,
               answer: str | None) -> Batch:
    """The seal (last event's seq and hash) goes into an append-only table, so cutting
    events after any seal the run was ever given is detected; the listing is updated."""
    return Batch(seals=[(run_id, seq, sealed_hash)],
                 listings=[{"run_id": run_id, "status": status, "stop_reason": stop_reason,
                            "answer_preview": (answer or "")[:200], "sealed_hash": sealed_hash}])


def _owner_alive(owner: str | None) -> bool:
    """Whether `host:pid` names another live process on this host."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


EventObserver = Callable[["TraceWriter", Event], None]
OBSERVERS: list[EventObserver] = []
"""Called with (writer, event) after each event is chained: how refinegraph.trace.otel
follows runs live. Set REFINEGRAPH_OTEL=1 to add its exporter. An observer that raises is
logged; it never breaks the run."""


def _observers_from_env() -> None:
    """REFINEGRAPH_OTEL=1: export every traced run as OpenTelemetry spans as it happens."""
    if os.environ.get("REFINEGRAPH_OTEL", "").strip().lower() in {"1", "true", "yes", "on"}:
        _by_name(OTEL_LIVE)()


# Events committed by `seal`, with the run's seal, rather than at once.
SEALING = frozenset({"run_finished"})


class TraceWriter:
    """Appends one run's events to its chain, setting seq, time and hashes.

    Events of a node are held until the node's next model call is committed (`commit`, which
    the RunContext awaits after each `llm_call`) or `flush`; events outside any node are
    committed at once; `seal` commits what is held with the run's end.
    """

    def __init__(self, store: BaseTraceStore, run_id: str, *, new: bool = False, deferred: bool = False):
        self.store = store
        self.run_id = run_id
        self.deferred = deferred
        """Events outside nodes wait for the caller's next `await commit()` (the runner's way:
        its run_started, resumed and finished events join a group commit) instead of being
        committed on the spot."""
        self.next_seq, self.last_hash = (0, genesis_hash(run_id)) if new else store.last_link(run_id)
        self.written = 0
        self._held = Batch()
        _observers_from_env()

    def create_run(self, graph: str, input_preview: str, *, replay_of: str | None = None,
                   owner: str | None = None) -> None:
        """List the run; the row is committed with its first events (one transaction)."""
        self._held.runs.append(new_run_row(self.run_id, graph, redact_text(input_preview), replay_of, owner))

    def seal(self, status: str, stop_reason: str, answer: str | None) -> None:
        """Commit what is held together with the run's seal and final listing."""
        self._hold_seal(status, stop_reason, answer)
        self.flush()

    async def seal_async(self, status: str, stop_reason: str, answer: str | None) -> None:
        """`seal`, in a group commit with the other runs of the event loop."""
        self._hold_seal(status, stop_reason, answer)
        await self.commit()

    def _hold_seal(self, status: str, stop_reason: str, answer: str | None) -> None:
        answer = redact_text(answer) if answer else answer  # the listing's preview, like the events
        self._held.extend(seal_batch(self.run_id, self.next_seq - 1, self.last_hash, status, stop_reason, answer))

    def set_status(self, status: str) -> None:
        """Commit what is held, then list the (unsealed) run as `status`."""
        self.list_as(status=status)

    def list_as(self, **columns: Any) -> None:
        """Commit what is held with the run's listing changed (status, stop_reason, owner)."""
        self._held.listings.append({"run_id": self.run_id, **columns})
        self.flush()

    def append(self, event: Event) -> Event:
        event.run_id, event.seq, event.ts = self.run_id, self.next_seq, utcnow()
        body = event_body(event)
        digest = event_hash(self.last_hash, body)
        self._held.events.append((self.run_id, event.seq, event.type, body, self.last_hash, digest))  # type: ignore[attr-defined]
        self.last_hash, self.next_seq = digest, self.next_seq + 1
        self.written += 1
        if event.node is None and not self.deferred and event.type not in SEALING:  # type: ignore[attr-defined]
            self.flush()
        for observer in tuple(OBSERVERS):
            try:
                observer(self, event)
            except Exception:  # noqa: BLE001 - telemetry must not break the run; logged with its traceback
                _log.warning("trace observer %r failed on event %s", observer, event.seq, exc_info=True)
        return event

    def put_blob(self, value: Any) -> str:
        """The blob's digest; the blob is committed with the event that references it."""
        data = redacted_json(value).encode()
        digest = content_digest(data)
        self._held.blobs[digest] = data
        return digest

    def take(self) -> Batch:
        """What is held, handed over for a commit (see give_back)."""
        batch, self._held = self._held, Batch()
        return batch

    def give_back(self, batch: Batch) -> None:
        """A batch whose commit failed is held again, before anything held since."""
        batch.extend(self._held)
        self._held = batch

    def flush(self) -> None:
        """Commit what is held now (kept for a later try if the commit fails)."""
        batch = self.take()
        if not batch:
            return
        try:
            self.store.commit(batch)
        except BaseException:
            self.give_back(batch)
            raise

    async def commit(self) -> None:
        """Commit what is held before going on, in one transaction with whatever other runs
        of this event loop commit meanwhile (group commit)."""
        if self._held:
            await self.store.commit_group(self)


class NullWriter:
    """Tracing off: events are counted and dropped, blobs are not kept."""

    store = None

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.next_seq = 0
        self.last_hash = genesis_hash(run_id)
        self.written = 0

    def append(self, event: Event) -> Event:
        event.run_id, event.seq = self.run_id, self.next_seq
        self.next_seq += 1
        return event

    def put_blob(self, value: Any) -> str:
        return ""

    def flush(self) -> None:
        return None

    async def commit(self) -> None:
        return None

    def create_run(self, graph: str, input_preview: str, **kwargs: Any) -> None:
        return None

    def seal(self, status: str, stop_reason: str, answer: str | None) -> None:
        return None

    async def seal_async(self, status: str, stop_reason: str, answer: str | None) -> None:
        return None

    def set_status(self, status: str) -> None:
        return None

    def list_as(self, **columns: Any) -> None:
        return None
