"""The trace store under ordinary concurrent use (issue 11, point 1) and kill -9.

An app that calls `refinegraph.run(...)` in a loop (each run opening and closing the store,
as the Python API does) while `refinegraph trace list` runs from a shell lost its store:
116 of 150 runs failed with "disk I/O error". The cause was the store's own damage checks,
which read the database file with plain Python I/O: closing that descriptor drops every
POSIX lock the process holds on the file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

from refinegraph.bench.reliability_torture import torture
from refinegraph.config import Config
from refinegraph.models import ScriptedModel
from refinegraph.trace.store import open_store
from refinegraph.trace.verify import verify_run

RUNS = 150
LISTINGS = 20


def _list_repeatedly(location: str, times: int, results: list[int]) -> None:
    env = {**os.environ, "REFINEGRAPH_TRACE_STORE": location}
    for _ in range(times):
        done = subprocess.run([sys.executable, "-m", "refinegraph.cli.app", "trace", "list"], env=env,
                              capture_output=True, text=True, timeout=120)
        results.append(done.returncode)


def test_an_app_running_runs_while_a_shell_lists_them_loses_nothing(tmp_path, monkeypatch):
    location = str(tmp_path / "traces.sqlite")
    monkeypatch.setenv("REFINEGRAPH_TRACE_STORE", location)
    from refinegraph import run

    listed: list[int] = []
    lister = threading.Thread(target=_list_repeatedly, args=(location, LISTINGS, listed))
    lister.start()
    failures, run_ids = [], []

    async def app() -> None:
        for i in range(RUNS):
            model = ScriptedModel([f"The answer is {i}."], name="local")
            try:
                if i % 2:  # an app that opens and closes a store of its own per run
                    with open_store(location) as store:
                        result = await run("greedy", f"What is {i} + 0?", config=Config(), models={"local": model},
                                           store=store)
                else:  # the Python API's default store
                    result = await run("greedy", f"What is {i} + 0?", config=Config(), models={"local": model})
                run_ids.append(result.run_id)
            except Exception as exc:  # counted: the assertion below names them
                failures.append(f"run {i}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0)

    asyncio.run(app())
    lister.join(timeout=600)
    assert failures == [], f"{len(failures)} of {RUNS} runs failed, e.g. {failures[:3]}"
    assert listed == [0] * LISTINGS
    with open_store(location) as store:
        reports = [verify_run(store, run_id) for run_id in run_ids]
        assert [r.problem for r in reports if not (r.ok and r.sealed)] == []
        assert len(store.all_runs()) == RUNS and store.integrity_problems() == []


def test_writers_a_reader_and_a_kill_lose_no_event(tmp_path):
    """Four writer processes (a store opened and closed per run), a reader running trace
    list/verify, one writer killed with SIGKILL mid-way: every finished run verifies, every
    cut run resumes without paying a finished call again."""
    figures = torture(str(tmp_path / "traces.sqlite"), tmp_path / "work", processes=4, runs=12, reader_rounds=4)
    assert figures["problems"] == []
    assert figures["killed_writer"] is not None and figures["runs_finished"] >= 3 * 12
    assert figures["traces_verified"] == figures["runs_listed"] and figures["disk_io_errors"] == 0
