"""Fresh SQLite files opened by many runs or processes at once: no "database is locked".

Before the setup lock, concurrent first opens of a checkpoint file failed (7 of 120 opens
in a local loop), and a trace store opened by 4 processes at once could read a
half-made schema as a foreign file.
"""

from __future__ import annotations

import asyncio
import multiprocessing

from refinegraph.runner import open_saver as _saver
from refinegraph.trace.store import TraceStore


async def test_concurrent_first_opens_of_a_checkpoint_file_all_succeed(tmp_path):
    async def open_and_set_up(path):
        async with _saver(path) as saver:
            await saver.setup()

    for i in range(10):
        path = tmp_path / f"checkpoints-{i}.sqlite"
        outcomes = await asyncio.gather(*[open_and_set_up(path) for _ in range(6)], return_exceptions=True)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []


def _open_store_and_write(path: str, name: str, failures) -> None:
    try:
        TraceStore(path).create_run(name, "greedy", "input")
    except Exception as exc:  # reported to the parent, which asserts there were none
        failures.put(f"{name}: {exc!r}")


def test_four_processes_opening_a_fresh_trace_store_at_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    failures = context.Queue()
    for i in range(3):
        path = str(tmp_path / f"traces-{i}.sqlite")
        workers = [context.Process(target=_open_store_and_write, args=(path, f"run-{k}", failures))
                   for k in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        # a worker's error first: it says why a run is missing (CI once saw 3 of 4, unexplained)
        assert failures.empty(), failures.get()
        assert len(TraceStore(path).all_runs()) == 4


def test_a_store_made_anew_at_the_same_path_gets_its_schema_again(tmp_path):
    """Deleted and made anew, a file often gets its old inode number back: emptied in place
    (the same inode for sure), the store must still be set up, not taken as done."""
    path = tmp_path / "traces.sqlite"
    TraceStore(path).close()
    for suffix in ("", "-wal", "-shm"):
        if (tmp_path / f"traces.sqlite{suffix}").exists():
            (tmp_path / f"traces.sqlite{suffix}").open("wb").close()
    store = TraceStore(path)
    store.create_run("r", "greedy", "input")  # "no such table: runs" when the setup was skipped
    assert [r["run_id"] for r in store.all_runs()] == ["r"]
    store.close()
