"""Start-up time of the CLI beside a bare `import typer`, measured in the same run.

    python scripts/bench_startup.py [--rounds 5] [--check]

Each round runs, interleaved, `python -c "import typer"`, `refinegraph --help` and
`refinegraph graphs` as fresh processes and times them from spawn to exit; the medians over
the rounds and each command's ratio to the bare import are printed. The goals (issue 17):
at most 0.5 s on a quiet machine and at most 4x the bare import. With --check the exit
status is 1 when a goal is missed (a busy machine misses the absolute one: compare ratios).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

LIMIT_S = 0.5
LIMIT_RATIO = 4.0


def _cli() -> list[str]:
    """The installed console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("refinegraph")
    if script.exists():
        return [str(script)]
    found = shutil.which("refinegraph")
    return [found] if found else [sys.executable, "-m", "refinegraph.cli.app"]


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, "COLUMNS": "100"})
    return time.perf_counter() - start


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each command over `rounds` interleaved rounds (one warm-up first)."""
    commands = {
        'python -c "import typer"': [sys.executable, "-c", "import typer"],
        "refinegraph --help": [*_cli(), "--help"],
        "refinegraph graphs": [*_cli(), "graphs"],
    }
    for argv in commands.values():  # warm the file cache and the bytecode
        _seconds(argv)
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(rounds):
        for label, argv in commands.items():
            times[label].append(_seconds(argv))
    return {label: statistics.median(values) for label, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    medians = measure(args.rounds)
    bare = medians['python -c "import typer"']
    ok = True
    print(f"median of {args.rounds} rounds, same run (goal: <= {LIMIT_S} s and <= {LIMIT_RATIO:g}x the bare import)")
    for label, seconds in medians.items():
        ratio = seconds / bare
        met = label.startswith("python") or (seconds <= LIMIT_S and ratio <= LIMIT_RATIO)
        ok = ok and met
        verdict = "" if label.startswith("python") else ("  ok" if met else "  MISSED")
        print(f"{label:<28} {seconds:6.3f} s  {ratio:5.2f}x{verdict}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
