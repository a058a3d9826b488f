"""Finding damage in a trace store file and recovering from it without losing a row.

Two kinds of damage, found when a store is opened (refinegraph.trace.store.TraceStore)
by a process that is its only user:

- the file itself: `PRAGMA quick_check` fails, or SQLite cannot read it at all (a file
  cut short, a page overwritten). Recovery keeps the damaged files as they were found
  (`<store>.damaged-<UTC time>`, with its -wal and -shm beside it under the same name),
  reads every row it can out of them, into a fresh store that replaces the damaged one:
  first every row SQLite can still read, as stored (so an edit made before the damage is
  still detected), then every row found on the remaining pages and -wal frames
  (refinegraph.trace.salvage) that proves itself: an event whose hash covers its body
  and its predecessor's hash, a blob whose digest is its content. A run whose listing is
  gone but whose events remain is listed again from its run_started event.
- the -wal file ends mid-frame: a write was cut (a crash during a commit, or the file
  was truncated); SQLite drops every frame after the last whole commit. The -wal (and
  the store) are copied aside, and rows on the dropped frames that the store lacks are
  added where they continue a run's chain (each event linking to the last one stored,
  its blobs present): a commit cut from the file is put back as far as its pages survive.

Either way a `recoveries` row in the store records when, why, where the damaged files are
kept, what was salvaged, and what was lost (events named by run and seq, from gaps in
the chains, from seals, and from index pages that outlived their rows; runs whose every
row is gone), so `refinegraph trace verify` can name what the damage broke.

A file cut to zero bytes with no -wal is indistinguishable from a new, empty store: there
is nothing left to detect or salvage. A -wal cut exactly at a frame boundary leaves no
mark either (one cut offset in page size + 24 does this).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinegraph.trace import salvage
from refinegraph.trace.chain import blob_refs, content_digest, event_hash

_log = logging.getLogger(__name__)
CHECKPOINT_SETTLE_S = 0.5
"""How long a file that looks cut gets, while others use the store, to finish a checkpoint."""

TABLES = ("runs", "events", "blobs", "seals", "recoveries")
SUFFIXES = ("", "-wal", "-shm")
CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)
LISTED_PER_RUN = 50
"""Lost events named per run in a recovery's detail (the count is always exact)."""


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file is damaged (rather than busy, locked or misused)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in CORRUPT_CODES
    text = str(exc)
    return "malformed" in text or "not a database" in text


@dataclass
class Damage:
    """What is wrong with a store file, as found on open."""

    kind: str
    """"file" (the main file does not check), "wal" (the -wal ends mid-frame), or "foreign"
    (not a trace store at all: refused, never recovered)."""
    reason: str


def wal_cut(path: Path) -> salvage.WalInfo | None:
    """The -wal's state when it ends mid-frame or its header is gone (None when whole).

    Only meaningful while no other process has the store open: a writer appending a frame
    leaves the file mid-frame for a moment.
    """
    wal = Path(f"{path}-wal")
    if not wal.is_file() or wal.stat().st_size == 0:
        return None
    info, _frames = salvage.read_wal(wal)
    if info.torn_bytes or not info.header_ok:
        return info
    return None


def _read_only(path: Path, sql: str) -> list[Any] | str:
    """The rows of `sql` on the file opened read-only (so that closing it never
    checkpoints the -wal into a damaged file and deletes it), or SQLite's word that the
    file is damaged."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        try:
            return [r[0] for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        return str(exc)


def quick_check(path: Path) -> str | None:
    """SQLite's quick_check of the file (it reads every page): None when it holds, else
    what it found."""
    rows = _read_only(path, "PRAGMA quick_check")
    if isinstance(rows, str) or rows == ["ok"]:
        return None if rows == ["ok"] else rows
    return "; ".join(line for row in rows[:5] for line in row.splitlines()[:3])


def _header_readable(path: Path) -> str | None:
    """Whether SQLite can read the schema (page 1 and the schema pages): what a cheap open
    can say of a file (None when it can)."""
    found = _read_only(path, "SELECT COUNT(*) FROM sqlite_master")
    return found if isinstance(found, str) else None


def _cut_short(path: Path) -> str | None:
    """A main file cut short, found in O(1) from its size and header: SQLite writes whole
    pages, so a file ending inside one was cut (SQLite reads the missing bytes as zeros, so
    quick_check may not see it); and one shorter than the page count its header records
    (a count that holds when its version-valid-for number equals the change counter) was
    cut on a page boundary."""
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        head = handle.read(100)
    if len(head) < 18 or head[:16] != salvage.HEADER_MAGIC:
        return None
    raw = int.from_bytes(head[16:18], "big")
    page_size = 65536 if raw == 1 else raw
    size = path.stat().st_size
    if page_size >= 512 and size % page_size:
        return f"the file ends {size % page_size} bytes into page {size // page_size + 1}: it was cut"
    pages = int.from_bytes(head[28:32], "big") if len(head) == 100 else 0
    if pages and head[92:96] == head[24:28] and size < pages * page_size:
        return f"the file holds {size // page_size} of the {pages} pages its header records: it was cut"
    return None


def _cut_short_settled(path: Path, sole: bool) -> str | None:
    """`_cut_short`, looked at twice when other processes use the store: a checkpoint writes
    page 1 (with the new page count) before the pages that grow the file, so for a moment a
    healthy file is shorter than its header says."""
    problem = _cut_short(path)
    if problem is None or sole:
        return problem
    time.sleep(CHECKPOINT_SETTLE_S)
    return _cut_short(path)


def looks_like_store(path: Path, version: int) -> bool:
    """Whether a file SQLite cannot read is a trace store (damaged) rather than some other
    file: it starts as an SQLite file does (or is cut inside those first bytes, or has a
    -wal beside it), and its header names no other schema version."""
    head = path.read_bytes()[:100] if path.is_file() else b""
    if Path(f"{path}-wal").is_file() and len(head) < 16:
        return True
    if not (salvage.HEADER_MAGIC.startswith(head) or head.startswith(salvage.HEADER_MAGIC)):
        return False
    return len(head) < 64 or int.from_bytes(head[60:64], "big") in (0, version)


def inspect(path: Path, *, sole: bool, version: int = 1, full: bool = True) -> Damage | None:
    """The damage of the store at `path`, if any (the -wal is judged only when `sole`).
    A file that is no trace store at all is "foreign" damage: never recovered.

    `full`: SQLite's quick_check too, which reads every page (0.26 s for a 55 MB store);
    without it only the O(1) checks of a cut file and a cut -wal run, and SQLite's own
    reading of the header (what opening a store does on every start of a process)."""
    if not path.exists() and not Path(f"{path}-wal").exists():
        return None
    torn = wal_cut(path) if sole else None
    problem = (quick_check(path) if full else _header_readable(path)) or _cut_short_settled(path, sole)
    if problem is not None:
        if not looks_like_store(path, version):
            return Damage("foreign", problem)
        return Damage("file", f"the file does not check: {problem}")
    if torn is not None:
        return Damage("wal", f"the -wal file ends {torn.torn_bytes} bytes into a frame"
                             f"{'' if torn.header_ok else ' (its header is gone)'}: a write was cut, by a crash "
                             "during a commit or a truncated file; SQLite drops every frame after the last "
                             f"whole commit ({torn.valid_frames} of {torn.frames} whole frames kept)")
    return None


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"


def _keep(source: Path, kept: Path, *, copy: bool) -> bool:
    """Keep `source` as `kept`: a hard link (no bytes copied) or, with `copy` or where links
    are refused, a copy. False when there was no such file."""
    if not source.exists():
        return False
    if not copy:
        try:
            os.link(source, kept)
            return True
        except OSError as exc:
            _log.warning("cannot hard-link %s to %s (%s); copying it", source, kept, exc)
    shutil.copy2(source, kept)
    return True


# -- reading what remains --------------------------------------------------------------------------


def _sqlite_rows(path: Path) -> tuple[dict[str, list[tuple]], dict[str, str]]:
    """Rows SQLite can still read, table by table, up to the first page it cannot."""
    rows: dict[str, list[tuple]] = {t: [] for t in TABLES}
    errors: dict[str, str] = {}
    try:
        conn = sqlite3.connect(path, timeout=30.0)
    except sqlite3.DatabaseError as exc:
        return rows, {t: str(exc) for t in TABLES}
    try:
        for table in TABLES:
            try:
                for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608 - fixed table names
                    rows[table].append(tuple(row))
            except sqlite3.DatabaseError as exc:
                if not (table == "recoveries" and "no such table" in str(exc)):  # a store older than recoveries
                    errors[table] = str(exc)
    finally:
        conn.close()
    return rows, errors


def _event_proves_itself(values: tuple) -> bool:
    run_id, seq, kind, body, prev_hash, digest = values
    if event_hash(prev_hash, body) != digest:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("run_id") == run_id and data.get("seq") == seq \
        and data.get("type") == kind


@dataclass
class Salvage:
    """The rows a recovery keeps, and what it found missing."""

    runs: dict[str, tuple] = field(default_factory=dict)
    events: dict[tuple[str, int], tuple] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    seals: dict[tuple[str, int], tuple] = field(default_factory=dict)
    recoveries: list[tuple] = field(default_factory=list)
    from_sqlite: dict[str, int] = field(default_factory=dict)
    from_pages: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    """Rows read off the pages that did not prove themselves (cut or stale), by table."""
    rebuilt: list[str] = field(default_factory=list)
    unproven: dict[str, list[int]] = field(default_factory=dict)
    """Events SQLite still read whose hash does not cover them (kept as stored), by run."""


def collect(path: Path, wal: Path | None) -> tuple[Salvage, salvage.Scan, dict[str, str]]:
    """Every row worth keeping from the (copied) damaged store at `path`."""
    pages = salvage.scan(path, wal)  # before SQLite opens the copy (it may rewrite its -wal)
    readable, errors = _sqlite_rows(path)
    kept = Salvage()
    rejected: dict[str, int] = defaultdict(int)
    for table in ("runs", "events", "blobs", "seals"):  # a damaged page can read as rows of NULLs
        shaped = [row for row in readable[table] if salvage.table_of(tuple(row)) == table]
        rejected[table] += len(readable[table]) - len(shaped)
        readable[table] = shaped
    for row in readable["runs"]:
        kept.runs.setdefault(row[0], row)
    for row in readable["events"]:
        kept.events.setdefault((row[0], row[1]), row)
        if not _event_proves_itself(row):  # kept as stored: damaged here, or edited before
            kept.unproven.setdefault(row[0], []).append(row[1])
    for row in readable["blobs"]:
        kept.blobs.setdefault(row[0], bytes(row[1]))
    for row in readable["seals"]:
        kept.seals.setdefault((row[0], row[1]), row)
    kept.recoveries = [row[1:] for row in readable["recoveries"]]
    kept.from_sqlite = {t: len(readable[t]) for t in TABLES}
    counts: dict[str, int] = defaultdict(int)
    candidates = {t: sorted(pages.rows.get(t, []), key=lambda r: -r[0]) for t in TABLES}  # newest first
    for _order, values in candidates["events"]:
        key = (values[0], values[1])
        if key in kept.events:
            continue
        if _event_proves_itself(values):
            kept.events[key] = values
            counts["events"] += 1
        else:
            rejected["events"] += 1
    for _order, (digest, data) in candidates["blobs"]:
        if digest in kept.blobs:
            continue
        if content_digest(data) == digest:
            kept.blobs[digest] = data
            counts["blobs"] += 1
        else:
            rejected["blobs"] += 1
    for _order, values in candidates["seals"]:
        if (values[0], values[1]) not in kept.seals:
            kept.seals[(values[0], values[1])] = values
            counts["seals"] += 1
    tips = _chain_tips(kept.events)
    by_run: dict[str, list[tuple[int, tuple]]] = defaultdict(list)
    for order, values in candidates["runs"]:
        if values[0] not in kept.runs:
            by_run[values[0]].append((order, values))
    for run_id, versions in by_run.items():
        # the newest listing whose seal is the chain's last hash, else the newest
        versions.sort(key=lambda v: (v[1][7] is not None and v[1][7] == tips.get(run_id), v[0]), reverse=True)
        kept.runs[run_id] = _pad_run(versions[0][1])
        counts["runs"] += 1
    known = {tuple(r) for r in kept.recoveries}
    for _order, values in candidates["recoveries"]:
        if tuple(values[1:]) not in known:
            kept.recoveries.append(tuple(values[1:]))
            known.add(tuple(values[1:]))
            counts["recoveries"] += 1
    for run_id in sorted({run for run, _seq in kept.events} - set(kept.runs)):
        kept.runs[run_id] = _listing_from_events(run_id, kept.events, kept.seals)
        kept.rebuilt.append(run_id)
    kept.from_pages, kept.rejected = dict(counts), {k: v for k, v in rejected.items() if v}
    return kept, pages, errors


def _pad_run(values: tuple) -> tuple:
    """A runs row with every column (rows written before `owner` existed lack it)."""
    return tuple(values) + (None,) * (10 - len(values))


def _chain_tips(events: dict[tuple[str, int], tuple]) -> dict[str, str]:
    """run id -> the hash of its last event."""
    tips: dict[str, tuple[int, str]] = {}
    for (run_id, seq), values in events.items():
        if run_id not in tips or seq > tips[run_id][0]:
            tips[run_id] = (seq, values[5])
    return {run: tip[1] for run, tip in tips.items()}


def _body_or_empty(text: str) -> dict[str, Any]:
    """An event body as a dict; {} for one kept as stored that does not parse to an object
    (an unproven event: damaged, or edited before the damage; verify names it)."""
    try:
        body = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _listing_from_events(run_id: str, events: dict[tuple[str, int], tuple],
                         seals: dict[tuple[str, int], tuple]) -> tuple:
    """A runs row rebuilt from the run's events (its listing was lost)."""
    mine = sorted((seq, values) for (run, seq), values in events.items() if run == run_id)
    first = _body_or_empty(mine[0][1][3])
    if first.get("type") != "run_started":  # listed anyway, so that verify names what it lost
        return (run_id, "?", "(its listing and first events were lost to damage)", first.get("ts", ""), "running",
                None, None, None, None, None)
    graph = first.get("graph") or "?"
    task = first.get("input") or {}
    preview = str(next(iter(task.values()), task) if isinstance(task, dict) and len(task) == 1 else task)[:200]
    last_seq, last = mine[-1]
    body = _body_or_empty(last[3])
    sealed = any(run == run_id and seal[2] == last[5] for (run, _s), seal in seals.items())
    if body.get("type") == "run_finished" and sealed:
        status = "error" if body.get("stop_reason") == "error" else "finished"
        return (run_id, graph, preview, first.get("ts", ""), status, body.get("stop_reason"),
                (body.get("answer") or "")[:200], last[5], first.get("replay_of"), None)
    return (run_id, graph, preview, first.get("ts", ""), "running", None, None, None, first.get("replay_of"), None)


def losses(kept: Salvage, pages: salvage.Scan) -> dict[str, Any]:
    """What should be in the store and is not: events by run (gaps in a chain, a seal past
    its end, index entries without their row), runs with no row at all, missing blobs."""
    lost: dict[str, set[int]] = defaultdict(set)
    present = set(kept.events)
    seqs: dict[str, list[int]] = defaultdict(list)
    for run_id, seq in present:
        seqs[run_id].append(seq)
    for run_id, found in seqs.items():
        lost[run_id] |= set(range(max(found) + 1)) - set(found)
    for run_id, seq in kept.seals:
        top = max(seqs.get(run_id, [-1]))
        lost[run_id] |= {s for s in range(top + 1, seq + 1)}
    for key in pages.index_keys.get(3, ()):
        if isinstance(key[0], str) and isinstance(key[1], int) and (key[0], key[1]) not in present:
            lost[key[0]].add(key[1])
    runs_gone = sorted(k[0] for k in pages.index_keys.get(2, ()) if isinstance(k[0], str)
                       and not k[0].startswith("sha256:") and k[0] not in kept.runs)
    blobs_gone = set()
    for values in kept.events.values():
        blobs_gone |= {ref for ref in blob_refs(_body_or_empty(values[3])) if ref not in kept.blobs}
    lost = {run: seqs_ for run, seqs_ in lost.items() if seqs_}
    return {"events_lost_count": sum(len(s) for s in lost.values()),
            "events_lost": {run: sorted(s)[:LISTED_PER_RUN] for run, s in sorted(lost.items())},
            "runs_lost": runs_gone, "blobs_lost": sorted(blobs_gone)}


# -- writing the recovered store -----------------------------------------------------------------------


def _write(target: Path, schema: str, version: int, kept: Salvage, record: tuple) -> None:
    """A fresh store at `target` holding `kept` and the recoveries so far plus `record`."""
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(schema)
        conn.execute(f"PRAGMA user_version={version}")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", kept.runs.values())
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                         [kept.events[k] for k in sorted(kept.events)])
        conn.executemany("INSERT INTO blobs VALUES (?, ?)", kept.blobs.items())
        conn.executemany("INSERT INTO seals VALUES (?, ?, ?)", kept.seals.values())
        conn.executemany("INSERT INTO recoveries (at, reason, damaged_file, detail) VALUES (?, ?, ?, ?)",
                         [*kept.recoveries, record])
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())


def recover_file(path: Path, damage: Damage, schema: str, version: int) -> dict[str, Any]:
    """Replace the damaged store at `path` with one rebuilt from what remains (see the
    module docstring); the caller holds the setup lock and is the store's only user."""
    stamp = _stamp()
    kept_as = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in SUFFIXES:
        _keep(Path(f"{path}{suffix}"), Path(f"{kept_as}{suffix}"), copy=False)
    with tempfile.TemporaryDirectory(prefix=".recovering-", dir=path.parent) as scratch:
        copy = Path(scratch) / "damaged.sqlite"
        has_db = _keep(kept_as, copy, copy=True)
        has_wal = _keep(Path(f"{kept_as}-wal"), Path(f"{copy}-wal"), copy=True)
        if not has_db:
            copy.touch()
        kept, pages, errors = collect(copy, Path(f"{copy}-wal") if has_wal else None)
        lost = losses(kept, pages)
        detail = {"kind": damage.kind, "rows_read_by_sqlite": kept.from_sqlite,
                  "rows_salvaged_from_pages": kept.from_pages, "rows_rejected": kept.rejected,
                  "runs_listed_again": kept.rebuilt, "unreadable_tables": errors,
                  "events_unproven": {run: sorted(seqs)[:LISTED_PER_RUN]
                                      for run, seqs in sorted(kept.unproven.items())},
                  "pages_expected": pages.pages_expected, "pages_read": pages.pages_read,
                  "pages_missing": pages.pages_missing,
                  "cells_malformed": pages.cells_malformed,
                  "wal": {"size": pages.wal.size, "frames": pages.wal.frames, "valid_frames": pages.wal.valid_frames,
                          "torn_bytes": pages.wal.torn_bytes},
                  **lost}
        record = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), damage.reason, str(kept_as),
                  json.dumps(detail, sort_keys=True))
        target = Path(scratch) / "recovered.sqlite"
        _write(target, schema, version, kept, record)
        # The damaged files live on under kept_as; only their names at `path` go, the -wal
        # first, so that no old -wal is ever applied to the new file.
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(target, path)
    _fsync_dir(path.parent)
    _log.warning("trace store %s was damaged (%s); recovered, the damaged files are kept as %s: %s",
                 path, damage.reason, kept_as, summary(detail))
    return {"at": record[0], "reason": damage.reason, "damaged_file": str(kept_as), "detail": detail}


def keep_cut_wal(path: Path) -> Path:
    """Copy the store and its cut -wal aside, before anything writes to the store (a write
    would overwrite the dropped frames). Copies, not links: SQLite rewrites a -wal in place."""
    kept_as = path.with_name(f"{path.name}.damaged-{_stamp()}")
    _keep(Path(f"{path}-wal"), Path(f"{kept_as}-wal"), copy=True)
    _keep(path, kept_as, copy=True)
    return kept_as


def recover_wal(path: Path, damage: Damage, conn: sqlite3.Connection, kept_as: Path) -> dict[str, Any]:
    """Add back the rows of the dropped frames of a cut -wal (kept as `kept_as` by
    `keep_cut_wal`) that continue a chain (see the module docstring). `conn` is an open
    connection to the store (SQLite has read the -wal's whole commits through it)."""
    pages = salvage.scan(kept_as, Path(f"{kept_as}-wal"))  # bytes only: the kept copies need no copy of their own
    added, refused, touched = _continue_chains(conn, pages)
    detail = {"kind": damage.kind, "rows_added_back": added, "rows_not_added": refused, "runs_touched": touched,
              "wal": {"size": pages.wal.size, "frames": pages.wal.frames, "valid_frames": pages.wal.valid_frames,
                      "torn_bytes": pages.wal.torn_bytes}}
    record = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), damage.reason, str(kept_as),
              json.dumps(detail, sort_keys=True))
    conn.execute("INSERT INTO recoveries (at, reason, damaged_file, detail) VALUES (?, ?, ?, ?)", record)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the cut tail goes; a copy is kept
    _log.warning("trace store %s: %s; a copy is kept as %s: %s", path, damage.reason, kept_as, summary(detail))
    return {"at": record[0], "reason": damage.reason, "damaged_file": str(kept_as), "detail": detail}


def _continue_chains(conn: sqlite3.Connection, pages: salvage.Scan) -> tuple[dict[str, int], dict[str, int],
                                                                              list[str]]:
    """Add rows found on the pages that the store lacks, where they continue a chain."""
    added: dict[str, int] = defaultdict(int)
    refused: dict[str, int] = defaultdict(int)
    touched: set[str] = set()
    have_blob = {}

    def blob_present(digest: str) -> bool:
        if digest not in have_blob:
            have_blob[digest] = conn.execute("SELECT 1 FROM blobs WHERE digest=?", (digest,)).fetchone() is not None
        return have_blob[digest]

    conn.execute("BEGIN IMMEDIATE")
    try:
        for _order, (digest, data) in pages.rows.get("blobs", []):
            if not blob_present(digest) and content_digest(data) == digest:
                conn.execute("INSERT INTO blobs (digest, data) VALUES (?, ?)", (digest, data))
                have_blob[digest] = True
                added["blobs"] += 1
        for _order, values in pages.rows.get("runs", []):
            if conn.execute("SELECT 1 FROM runs WHERE run_id=?", (values[0],)).fetchone() is None:
                conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _pad_run(values))
                added["runs"] += 1
                touched.add(values[0])
        by_run: dict[str, dict[int, tuple]] = defaultdict(dict)
        for _order, values in pages.rows.get("events", []):
            by_run[values[0]].setdefault(values[1], values)
        for run_id, found in by_run.items():
            row = conn.execute("SELECT seq, hash FROM events WHERE run_id=? ORDER BY seq DESC LIMIT 1",
                               (run_id,)).fetchone()
            seq, tip = (row[0] + 1, row[1]) if row else (0, None)
            missing = sorted(s for s in found if s >= seq)
            for s in missing:
                values = found[s]
                linked = s == seq and (tip is None or values[4] == tip)
                if not (linked and _event_proves_itself(values)
                        and all(blob_present(ref) for ref in blob_refs(json.loads(values[3])))):
                    refused["events"] += len([m for m in missing if m >= s])
                    break
                conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", values)
                added["events"] += 1
                seq, tip = s + 1, values[5]
            if missing:
                touched.add(run_id)
        for _order, values in pages.rows.get("seals", []):
            event = conn.execute("SELECT hash FROM events WHERE run_id=? AND seq=?", (values[0], values[1])).fetchone()
            exists = conn.execute("SELECT 1 FROM seals WHERE run_id=? AND seq=?", values[:2]).fetchone()
            if exists is None and event is not None and event[0] == values[2]:
                conn.execute("INSERT INTO seals VALUES (?, ?, ?)", values)
                added["seals"] += 1
                touched.add(values[0])
        for _order, values in sorted(pages.rows.get("runs", []), key=lambda r: r[0]):
            # a listing the cut commit had updated (a seal): taken when it matches the chain
            row = _pad_run(values)
            tip = conn.execute("SELECT hash FROM events WHERE run_id=? ORDER BY seq DESC LIMIT 1",
                               (row[0],)).fetchone()
            if row[7] is not None and tip is not None and row[7] == tip[0]:
                current = conn.execute("SELECT sealed_hash FROM runs WHERE run_id=?", (row[0],)).fetchone()
                if current is not None and current[0] != row[7]:
                    conn.execute("UPDATE runs SET status=?, stop_reason=?, answer_preview=?, sealed_hash=? "
                                 "WHERE run_id=?", (row[4], row[5], row[6], row[7], row[0]))
                    added["listings"] += 1
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return dict(added), dict(refused), sorted(touched)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:  # not every platform opens folders; the rename is still done
        _log.info("cannot open %s to fsync it: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def summary(detail: dict[str, Any]) -> str:
    """A recovery's detail in one line (the log's warning and `trace verify` both say it)."""
    if detail.get("kind") == "wal":
        added = sum(detail.get("rows_added_back", {}).values())
        return (f"{added} rows of the dropped frames added back, {detail.get('rows_not_added', {})} not; "
                f"runs touched: {', '.join(detail.get('runs_touched', [])) or 'none'}")
    salvaged = sum(detail.get("rows_salvaged_from_pages", {}).values())
    return (f"{sum(detail.get('rows_read_by_sqlite', {}).values())} rows read as stored, {salvaged} more salvaged "
            f"from the pages; {detail.get('events_lost_count', 0)} events lost in "
            f"{len(detail.get('events_lost', {}))} runs, {len(detail.get('runs_lost', []))} runs lost entirely, "
            f"{detail.get('pages_missing', 0)} pages found nowhere")
