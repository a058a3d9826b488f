"""The trace store runs are recorded in when the caller gives none: one per location and process."""

from __future__ import annotations

import atexit
import os
import threading

from refinegraph.config import Config
from refinegraph.trace.store import BaseTraceStore, open_store


def default_store(config: Config | None = None) -> BaseTraceStore:
    """The store runs are recorded in: REFINEGRAPH_TRACE_STORE, else the config's [trace]
    store, else $REFINEGRAPH_HOME/traces.sqlite."""
    settings = (config or Config()).trace
    return open_store(settings.location(), schema=settings.schema_, synchronous=settings.synchronous)


_shared: dict[tuple[int, str, str, str], BaseTraceStore] = {}


_shared_lock = threading.Lock()


def shared_store(config: Config | None = None) -> BaseTraceStore:
    """The store `run`, `resume` and `replay` use when given none: one per location and
    process, opened on first use and closed at exit. Opening a store per run costs a
    connection and, on SQLite, a WAL checkpoint when the last connection closes: more than
    the whole trace of a fast run. (A store made in a parent process is not reused in a
    forked child: the key holds the process id.)"""
    settings = (config or Config()).trace
    key = (os.getpid(), settings.location(), settings.schema_, settings.synchronous)
    with _shared_lock:
        store = _shared.get(key)
        if store is None:
            if not _shared:
                atexit.register(close_shared_stores)
            store = _shared[key] = default_store(config)
        return store


def close_shared_stores() -> None:
    """Close the stores `shared_store` opened (at exit; tests that move REFINEGRAPH_HOME)."""
    with _shared_lock:
        for key, store in list(_shared.items()):
            if key[0] == os.getpid():
                store.close()
        _shared.clear()
