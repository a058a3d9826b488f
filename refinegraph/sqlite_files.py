"""Creating a shared SQLite file's schema safely when several processes open it at once.

Two connections that both find a table missing in a fresh file both read the schema and
then both try to write it: SQLite answers the second "database is locked" at once, without
waiting out its busy timeout, since waiting could deadlock. Schema setup therefore runs
under an exclusive lock on a sidecar `<file>.lock` (fcntl; processes and threads alike),
once per process and file; after it, every connection only reads the existing schema.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the in-process lock alone
    fcntl = None  # type: ignore[assignment]

BUSY_TIMEOUT_S = 30.0

_prepared: set[tuple[str, int, int]] = set()
_guard = threading.Lock()


@contextlib.contextmanager
def setup_lock(path: Path) -> Iterator[None]:
    """Exclusive across processes (a sidecar lock file) and threads (a process-wide lock)."""
    with _guard:
        if fcntl is None:
            yield
            return
        with open(f"{path}.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _identity(path: Path) -> tuple[str, int, int] | None:
    """The file as it is now; None for one that is missing or empty, which no setup has
    touched (setting WAL mode writes the header page). An empty file is checked because a
    file deleted and made anew at the same path often gets the same inode number back."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    if stat.st_size == 0:
        return None
    return str(path.resolve()), stat.st_dev, stat.st_ino


def prepare_once(path: Path, setup: Callable[[sqlite3.Connection], None]) -> None:
    """Run `setup` on `path` under the setup lock (WAL mode first), once per process and file."""
    path = Path(path)
    if _identity(path) in _prepared:
        return
    with setup_lock(path):
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            setup(conn)
        finally:
            conn.close()
        identity = _identity(path)
        if identity is not None:
            _prepared.add(identity)
