"""SQLite trace store: append-only, hash-chained events and content-addressed blobs.

One file in WAL mode. Several processes may write at once (each run is its own chain);
triggers refuse UPDATE and DELETE on events, so the only way to change history is to go
around the store, which `verify` then detects.

When an event is committed, in one transaction with the blobs it references:
- an `llm_call` at once, with the events held before it: a finished model call is never
  paid again on resume, even after a hard crash inside its node;
- events outside nodes (run_started, run_finished, ...) at once;
- everything else with the next of those, and always before LangGraph checkpoints a
  step (the runner's checkpointer calls `flush` first), so the trace is never behind the
  checkpoint a run resumes from. (A commit on a writer thread was tried: the hand-off
  cost more than the commit it moved off the run's thread.)

A damaged file (cut short, a page lost, a -wal cut mid-frame) is found when the store is
opened: a cut file or -wal in O(1) on every open (a process's first open, or after the
file changed), a damaged page by SQLite's `quick_check`, which reads the whole file and so
runs only where the last user did not close the store (its -wal is still there while no
process has it open: a crash, a kill, a cut mid-write) or a full check is asked for
(`TraceStore(path, full_check=True)`: `refinegraph trace verify`).

The process that opens a damaged store while no other process has it open (each store
holds a shared lock on `<file>.users` while open) recovers it, losing nothing it can
read: the damaged files are kept beside the store (`<file>.damaged-<UTC time>`), every
readable row goes into a fresh store, and a `recoveries` row says when, why, where the
damaged files are, and which events and runs were lost (refinegraph.trace.recovery).
`refinegraph trace verify` prints it and names the runs the damage broke. Damage found
while other processes have the store open is reported (`damage`) and left for the next
open; an operation that meets damage raises TraceStoreError naming the file, and the next
open recovers it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from refinegraph.events import Event, utcnow
from refinegraph.sqlite_files import BUSY_TIMEOUT_S, prepare_once, setup_lock
from refinegraph.trace import recovery
from refinegraph.trace.chain import content_digest, event_body, event_hash, genesis_hash, redacted_json
from refinegraph.trace.redact import redact_text

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no users lock, so damage is reported, never recovered
    fcntl = None  # type: ignore[assignment]

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS recoveries (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    damaged_file TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS recoveries_no_update BEFORE UPDATE ON recoveries
BEGIN SELECT RAISE(ABORT, 'recoveries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS recoveries_no_delete BEFORE DELETE ON recoveries
BEGIN SELECT RAISE(ABORT, 'recoveries are append-only'); END;
"""


SCHEMA_VERSION = 1


class TraceStoreError(RuntimeError):
    """The store file cannot be opened or read as a trace store."""


_found_whole: dict[str, tuple[tuple, bool]] = {}
"""store path -> (the state of its files when this process last found them whole, whether
that was a full check)."""


def _file_state(path: Path) -> tuple:
    state = []
    for suffix in ("", "-wal"):
        try:
            stat = os.stat(f"{path}{suffix}")
            state.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            state.append(None)
    return tuple(state)


class TraceStore:
    """A trace store in one SQLite file (created with its schema on first open; checked,
    and recovered when damaged, on open: see the module docstring)."""

    def __init__(self, path: str | Path, *, full_check: bool = False):
        self.path = Path(path)
        self._full_check = full_check
        """SQLite's quick_check on open (reads every page; `trace verify` asks for it). Without
        it, opening checks in O(1) for a cut file or -wal (see recovery.inspect)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.recovered: dict[str, Any] | None = None
        """What opening the store recovered (a `recoveries` row, decoded), if anything."""
        self.damage: str | None = None
        """Damage found on open and not recovered, since other processes had the store open."""
        self._users: Any = None
        try:
            self._check_on_open()
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_S)
            try:
                prepare_once(self.path, self._create_schema)
                self._db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError:
                if self.damage is None:
                    raise
                # damaged and left for a later open (see `damage`): opened as it is, to read what it can
        except sqlite3.DatabaseError as exc:
            self._abandon()
            raise TraceStoreError(f"{self.path}: not a usable trace store: {exc}") from exc
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Let go of what a failed open took."""
        if getattr(self, "_db", None) is not None:
            self._db.close()
        self._release_users()

    def _users_lock(self, mode: int, *, wait: bool = True) -> bool:
        """Take `mode` on `<file>.users` (shared while open; exclusive to recover)."""
        if fcntl is None:
            return False
        if self._users is None:
            self._users = open(f"{self.path}.users", "a+b")  # noqa: SIM115 - held while the store is open
        try:
            fcntl.flock(self._users, mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _release_users(self) -> None:
        if self._users is not None:
            self._users.close()  # releases its lock
            self._users = None

    def _check_on_open(self) -> None:
        """Check the file when it changed since this process last found it whole, and
        recover it when damaged and no other process has it open (exclusive on the users
        lock, under the setup lock: no process opens the store meanwhile)."""
        key = str(self.path)
        with setup_lock(self.path):
            sole = self._users_lock(fcntl.LOCK_EX, wait=False) if fcntl else False
            state = _file_state(self.path)
            # A -wal left behind when no process has the store open means the last one did not
            # close it (a crash, a kill, a cut mid-write): then every page is checked, once.
            full = self._full_check or (sole and os.path.exists(f"{self.path}-wal"))
            seen = _found_whole.get(key)
            checked = seen is not None and seen[0] == state and (seen[1] or not full)
            damage = None if checked else recovery.inspect(self.path, sole=sole, version=SCHEMA_VERSION, full=full)
            if damage is None:
                _found_whole[key] = (state, full or (checked and seen[1]))
            elif damage.kind == "foreign":
                raise TraceStoreError(f"{self.path}: not a usable trace store: {damage.reason}")
            elif not sole:
                self.damage = damage.reason
                _log.warning("trace store %s is damaged (%s); not recovered now: other processes have it open",
                             self.path, damage.reason)
            elif damage.kind == "file":
                self.recovered = recovery.recover_file(self.path, damage, SCHEMA, SCHEMA_VERSION)
            else:
                kept = recovery.keep_cut_wal(self.path)
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
                try:
                    self._create_schema(conn)
                    self.recovered = recovery.recover_wal(self.path, damage, conn, kept)
                finally:
                    conn.close()
            self._users_lock(fcntl.LOCK_SH if fcntl else 0)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """The tables and triggers, once per process (see refinegraph.sqlite_files)."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        if tables and version != SCHEMA_VERSION:
            raise TraceStoreError(f"{self.path}: not a refinegraph trace store of schema {SCHEMA_VERSION} "
                                  f"(found user_version {version}); use another REFINEGRAPH_HOME")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._release_users()

    def recoveries(self) -> list[dict[str, Any]]:
        """Every recovery of this store from damage, oldest first (detail decoded)."""
        rows = self._query("SELECT * FROM recoveries ORDER BY id")
        for row in rows:
            row["detail"] = json.loads(row["detail"])
        return rows

    def _damaged(self, exc: sqlite3.DatabaseError) -> TraceStoreError:
        return TraceStoreError(f"{self.path} is damaged ({exc}); it is recovered when next opened by a process "
                               "while no other has it open (e.g. `refinegraph trace verify`)")

    # -- runs -----------------------------------------------------------------------------

    def create_run(self, run_id: str, graph: str, input_preview: str, replay_of: str | None = None,
                   owner: str | None = None) -> None:
        self.transaction([create_run_statement(run_id, graph, input_preview, replay_of, owner)])

    def transaction(self, statements: list[tuple[str, tuple]], blobs: list[tuple[str, bytes]] = (),
                    events: list[tuple[str, int, str, str, str, str]] = (),
                    after: list[tuple[str, tuple]] = ()) -> None:
        """Statements, then blobs (digest, data) and event rows, then `after`: all committed or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                if blobs:
                    self._db.executemany("INSERT OR IGNORE INTO blobs (digest, data) VALUES (?, ?)", blobs)
                if events:
                    self._db.executemany(
                        "INSERT INTO events (run_id, seq, type, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
                        events)
                for sql, args in after:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError) and recovery.is_corruption(exc):
                    raise self._damaged(exc) from exc
                raise

    def seals(self, run_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT seq, hash FROM seals WHERE run_id=? ORDER BY seq", (run_id,))

    def claim_run(self, run_id: str, seen_owner: str | None, owner: str, *, force: bool = False) -> bool:
        """Take an unfinished run over for resuming: refused while its owner process is alive
        on this host (unless forced), and atomic against a concurrent claim."""
        if not force and _owner_alive(seen_owner):
            return False
        with self._lock:
            cursor = self._db.execute(
                "UPDATE runs SET owner=?, status='running', sealed_hash=NULL WHERE run_id=? AND owner IS ?",
                (owner, run_id, seen_owner))
            return cursor.rowcount == 1

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
            raise KeyError(f"no run {prefix!r} in {self.path}")
        if len(rows) > 1 and rows[0]["run_id"] != prefix:
            raise KeyError(f"{prefix!r} names {len(rows)} runs; give more of the id")
        return rows[0]["run_id"]

    def all_runs(self) -> list[dict[str, Any]]:
        """Every run row, oldest first (merging stores walks them all)."""
        return self._query("SELECT * FROM runs ORDER BY created_at")

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._query(
            "SELECT r.*, (SELECT COUNT(*) FROM events e WHERE e.run_id=r.run_id) AS events "
            "FROM runs r ORDER BY created_at DESC LIMIT ?", (limit,))

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
            raise TraceStoreError(f"blob {digest} is missing from {self.path}")
        if content_digest(data) != digest:
            raise TraceStoreError(f"blob {digest} in {self.path} was altered")
        return json.loads(data)

    def blob_bytes(self, digest: str) -> bytes | None:
        rows = self._query("SELECT data FROM blobs WHERE digest=?", (digest,))
        return bytes(rows[0]["data"]) if rows else None

    def _query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, args)
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row)) for row in cursor.fetchall()]
            except sqlite3.DatabaseError as exc:
                if recovery.is_corruption(exc):
                    raise self._damaged(exc) from exc
                raise


# Events inside a node that commit at once (with whatever of the run is pending).
COMMIT_NOW = frozenset({"llm_call"})
# Events committed by `seal`, with the run's seal, rather than at once.
SEALING = frozenset({"run_finished"})


def create_run_statement(run_id: str, graph: str, input_preview: str, replay_of: str | None,
                         owner: str | None) -> tuple[str, tuple]:
    return ("INSERT INTO runs (run_id, graph, input_preview, created_at, status, replay_of, owner) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?)", (run_id, graph, input_preview[:200], utcnow(), replay_of, owner))


def seal_statements(run_id: str, seq: int, sealed_hash: str, status: str, stop_reason: str,
                    answer: str | None) -> list[tuple[str, tuple]]:
    """The seal (last event's seq and hash) goes into an append-only table, so cutting
    events after any seal the run was ever given is detected; the listing is updated."""
    return [("INSERT INTO seals (run_id, seq, hash) VALUES (?, ?, ?)", (run_id, seq, sealed_hash)),
            ("UPDATE runs SET status=?, stop_reason=?, answer_preview=?, sealed_hash=? WHERE run_id=?",
             (status, stop_reason, (answer or "")[:200], sealed_hash, run_id))]


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
"""Called with (writer, event) after each event is chained (and committed, where it commits
at once): how refinegraph.trace.otel follows runs live. Set REFINEGRAPH_OTEL=1 to add its
exporter. An observer that raises is logged; it never breaks the run."""

_log = logging.getLogger(__name__)


def _observers_from_env() -> None:
    """REFINEGRAPH_OTEL=1: export every traced run as OpenTelemetry spans as it happens."""
    if os.environ.get("REFINEGRAPH_OTEL", "").strip().lower() in {"1", "true", "yes", "on"}:
        from refinegraph.trace.otel import enable_live

        enable_live()


class TraceWriter:
    """Appends one run's events to its chain, setting seq, time and hashes.

    Events of a node are held until its next `llm_call` (or a checkpoint) and then
    committed in one transaction (see the module docstring); events outside any node are
    committed at once. `flush()` commits what is held.
    """

    def __init__(self, store: TraceStore, run_id: str, *, new: bool = False):
        self.store = store
        self.run_id = run_id
        self.next_seq, self.last_hash = (0, genesis_hash(run_id)) if new else store.last_link(run_id)
        self.written = 0
        self._events: list[tuple[str, int, str, str, str, str]] = []
        self._blobs: list[tuple[str, bytes]] = []
        self._statements: list[tuple[str, tuple]] = []
        _observers_from_env()

    def create_run(self, graph: str, input_preview: str, *, replay_of: str | None = None,
                   owner: str | None = None) -> None:
        """List the run; the row is committed with its first events (one transaction)."""
        self._statements.append(create_run_statement(self.run_id, graph, redact_text(input_preview), replay_of, owner))

    def seal(self, status: str, stop_reason: str, answer: str | None) -> None:
        """Commit what is held together with the run's seal and final listing."""
        after = seal_statements(self.run_id, self.next_seq - 1, self.last_hash, status, stop_reason,
                                redact_text(answer) if answer else answer)
        self.store.transaction(self._statements, self._blobs, self._events, after)
        self._events, self._blobs, self._statements = [], [], []

    def append(self, event: Event) -> Event:
        event.run_id, event.seq, event.ts = self.run_id, self.next_seq, utcnow()
        body = event_body(event)
        digest = event_hash(self.last_hash, body)
        self._events.append((self.run_id, event.seq, event.type, body, self.last_hash, digest))  # type: ignore[attr-defined]
        self.last_hash, self.next_seq = digest, self.next_seq + 1
        self.written += 1
        if event.type in COMMIT_NOW or (event.node is None and event.type not in SEALING):  # type: ignore[attr-defined]
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
        self._blobs.append((digest, data))
        return digest

    def flush(self) -> None:
        """Commit the held events and blobs (kept for a later try if the commit fails)."""
        if not self._events and not self._blobs and not self._statements:
            return
        self.store.transaction(self._statements, self._blobs, self._events)
        self._events, self._blobs, self._statements = [], [], []


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

    def create_run(self, graph: str, input_preview: str, **kwargs: Any) -> None:
        return None

    def seal(self, status: str, stop_reason: str, answer: str | None) -> None:
        return None
