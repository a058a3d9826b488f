"""A batch's out dir: what makes a batch resumable after a crash.

    batch.json      what the batch runs (graph, params, executor): a re-run must match it
    started.jsonl   {"id", "run_id"} written before each run starts
    results.jsonl   one line per input as its run ends (the last line of an id wins)
    shards/         the Ray executor's per-worker trace stores (and their checkpoints)
    batch.lock      held while a batch runs here, so two batches never share the dir

Lines are appended and flushed one at a time; a line cut short by a crash is ignored
when read back (and the next append starts on a fresh line).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, TextIO

_log = logging.getLogger(__name__)


class BatchDirError(RuntimeError):
    """The out dir is in use, or holds a different batch."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file (a torn last line is skipped with a warning)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            _log.warning("%s:%d: incomplete line ignored (cut by a crash?)", path, number)
    return rows


class _Appender:
    def __init__(self, path: Path):
        needs_newline = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.file: TextIO = path.open("a", encoding="utf-8")
        if needs_newline:
            self.file.write("\n")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class BatchDir:
    """The out dir of one batch, locked while open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.shards = self.path / "shards"
        self._lock = (self.path / "batch.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise BatchDirError(f"{self.path} is in use by another batch (batch.lock is held)") from None
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        self._started: _Appender | None = None
        self._results: _Appender | None = None

    def check_manifest(self, manifest: dict[str, Any]) -> None:
        """Record what this batch runs, or refuse if the dir holds a different batch."""
        path = self.path / "batch.json"
        if path.is_file():
            recorded = json.loads(path.read_text(encoding="utf-8"))
            differs = [k for k in manifest if k in recorded and recorded[k] != manifest[k]]
            if differs:
                raise BatchDirError(f"{self.path} holds a batch with other {', '.join(differs)} "
                                    f"({', '.join(f'{k}={recorded[k]!r}' for k in differs)}); use another --out")
        path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def started(self) -> dict[str, str]:
        """input id -> the run id it was last started with."""
        return {row["id"]: row["run_id"] for row in read_jsonl(self.path / "started.jsonl")}

    def results(self) -> dict[str, dict[str, Any]]:
        """input id -> its latest result line."""
        return {row["id"]: row for row in read_jsonl(self.path / "results.jsonl")}

    def record_start(self, ident: str, run_id: str) -> None:
        if self._started is None:
            self._started = _Appender(self.path / "started.jsonl")
        self._started.write({"id": ident, "run_id": run_id})

    def record_result(self, row: dict[str, Any]) -> None:
        if self._results is None:
            self._results = _Appender(self.path / "results.jsonl")
        self._results.write(row)

    def close(self) -> None:
        for appender in (self._started, self._results):
            if appender is not None:
                appender.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def __enter__(self) -> BatchDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
