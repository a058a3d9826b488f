"""The reliability and performance harnesses of refinegraph: not part of the installed package.

They live beside the package in a checkout and run as `python -m benchmarks ...` from the
repository's root (or as `refinegraph bench reliability|overhead|throughput|vllm|batch`, which
finds this folder beside an editable install). What is here: the fault-injecting proxy, the
hostile and injected SQL corpora, the server fuzzers and load, the crash, torture and tamper
parts, the instant model of the overhead and throughput benchmarks, and the counting stub
server the crash parts (and some tests) use as their model.

They are commands, not tests: nothing here asserts a threshold; a missed goal is printed as
missed. The evaluation commands a user runs on their own data (`refinegraph bench spider`,
`gsm8k`, `pool`, `allocation`, `sampling`) stay in the package, in `refinegraph.bench`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The checkout this folder lies in: what a child process needs on its path to import it."""


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with the checkout on PYTHONPATH, so a child process
    started with `python -c "from benchmarks... import ..."` finds this package from any cwd."""
    base = dict(os.environ if env is None else env)
    paths = [str(ROOT), *[p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p]]
    base["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return base


@contextlib.contextmanager
def spawned_children_find_benchmarks() -> Iterator[None]:
    """The checkout at the end of sys.path while `multiprocessing` (spawn) starts processes:
    spawn hands each child the parent's sys.path, and the child imports its target from
    `benchmarks`, which the parent may have loaded by path (refinegraph bench, the tests)."""
    root = str(ROOT)
    added = root not in sys.path
    if added:
        sys.path.append(root)
    try:
        yield
    finally:
        if added:
            sys.path.remove(root)
