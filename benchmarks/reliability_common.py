"""What each part of `refinegraph bench reliability` reports, in one shape.

Every part (faults, crashes, hostile input, server, load) returns a `Section`: the
totals the last printed line sums over all parts (runs, faults injected, traces verified,
events lost, writes made), whether the part met its expectation, and its own figures.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from refinegraph.trace.store import TraceStore
from refinegraph.trace.verify import verify_store


class Section(BaseModel):
    """One part's result."""

    name: str
    ok: bool
    """Whether every expectation of this part held (each failed one is in `problems`)."""
    runs: int = 0
    """Graph runs made (each a traced run)."""
    faults_injected: int = 0
    """Faults this part caused on purpose: proxy faults, kills, truncations, edits, hostile inputs."""
    traces_verified: int = 0
    """Runs whose hash chain was checked and held (tampered copies do not count here)."""
    traces_failed: int = 0
    """Runs whose chain did not hold where it should have."""
    events_lost: int = 0
    """Events that should be in a store and are not (expected minus found)."""
    writes_made: int = 0
    """Writes that reached a database or a file outside a sandbox (should be 0)."""
    seconds: float = 0.0
    figures: dict[str, Any] = Field(default_factory=dict)
    """This part's own measurements (rates, latencies, counts by class), for report.json."""
    lines: list[str] = Field(default_factory=list)
    """Human-readable lines for report.md, figures first."""
    problems: list[str] = Field(default_factory=list)
    """Each expectation that did not hold, in words."""

    def expect(self, condition: bool, problem: str) -> bool:
        """Record `problem` (and clear ok) when `condition` is false."""
        if not condition:
            self.ok = False
            self.problems.append(problem)
        return condition


TOTALS = ("runs", "faults_injected", "traces_verified", "traces_failed", "events_lost", "writes_made")


def totals_of(sections: list[Section]) -> dict[str, int]:
    """Each of TOTALS summed over the parts."""
    return {key: sum(getattr(s, key) for s in sections) for key in TOTALS}


def summary_line(sections: list[Section]) -> str:
    """The bench's last printed line: totals over every part."""
    totals = totals_of(sections)
    verdict = "ok" if all(s.ok for s in sections) else "FAILED: " + ", ".join(s.name for s in sections if not s.ok)
    return (f"reliability: runs {totals['runs']}, faults injected {totals['faults_injected']}, "
            f"traces verified {totals['traces_verified']} (failed {totals['traces_failed']}), "
            f"events lost {totals['events_lost']}, writes made {totals['writes_made']}: {verdict}")


def run_count(store: TraceStore) -> int:
    return store.count_runs()


def verify_all(store: TraceStore) -> tuple[int, int, list[str]]:
    """(runs verified, runs failed, the first ten problems) of every run in `store`."""
    report = verify_store(store)
    return (len(report.runs) - len(report.failed), len(report.failed),
            [f"run {r.run_id}: {r.problem}" for r in report.failed[:10]])


def workdir_for(workdir: Path | None, name: str) -> Path:
    """`workdir` (made), or a fresh temporary folder named after the part."""
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"rg-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
