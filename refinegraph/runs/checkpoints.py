"""LangGraph's checkpointer, for the runs that wait on a person through interrupt()."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from refinegraph.config import home
from refinegraph.sqlite_files import BUSY_TIMEOUT_S, prepare_once


class TraceFirstSaver(AsyncSqliteSaver):
    """LangGraph's SQLite checkpointer that commits the run's held trace events before each
    checkpoint write, so a paused run's trace is never behind its checkpoint."""

    flush: Any = None

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        self.flush()
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return await super().aput_writes(*args, **kwargs)


def checkpoint_file(path: Path | None = None) -> Path:
    """LangGraph's checkpoints, for runs that wait on a human ($REFINEGRAPH_HOME/checkpoints.sqlite)."""
    path = path or home() / "checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def _checkpointer(enabled: bool, path: Path | None, writer: Any) -> AsyncIterator[Any]:
    if not enabled:
        yield None
        return
    async with open_saver(checkpoint_file(path)) as saver:
        saver.flush = writer.flush
        yield saver


@contextlib.asynccontextmanager
async def open_saver(path: Path) -> AsyncIterator[TraceFirstSaver]:
    """A checkpointer on `path`, its schema made under the setup lock (concurrent runs and
    processes open the same file: see refinegraph.sqlite_files)."""
    prepare_once(path, lambda conn: SqliteSaver(conn).setup())
    async with aiosqlite.connect(str(path), timeout=BUSY_TIMEOUT_S) as conn:
        yield TraceFirstSaver(conn)
