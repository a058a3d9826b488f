"""`refinegraph bench reliability`: faults, crashes and hostile input, measured in one run.

Each part lives in its own module and returns a `Section` (reliability_common): the
proxy faults between refinegraph and its model (reliability_faults), the trace store under
crashes, concurrent use and tampering (reliability_crash, reliability_torture,
reliability_damage), hostile SQL and prompt-injected questions (reliability_sql), hostile
programs in the code sandbox (reliability_sandbox), and the server under fuzzing
(reliability_fuzz) and load (reliability_load). Parts run one after another, so no
part's load skews another's figures; a part that raises is reported as failed with its
error, and the others still run.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.reliability_common import Section, summary_line, totals_of
from refinegraph.bench.report import environment, md_table


@dataclass(frozen=True)
class Part:
    name: str
    module: str
    function: str
    options: tuple[str, ...] = ()
    """Which of the bench's options this part takes (by keyword)."""

    def load(self) -> Callable[..., Any]:
        from importlib import import_module

        return getattr(import_module(f"benchmarks.{self.module}"), self.function)


PARTS = (
    Part("faults", "reliability_faults", "faults_section", ("runs", "concurrency")),
    Part("crash", "reliability_crash", "crash_section", ("batch_runs",)),
    Part("concurrent-writers", "reliability_crash", "concurrent_writers_section"),
    Part("torture", "reliability_torture", "torture_section"),
    Part("tamper", "reliability_damage", "tamper_section"),
    Part("sql", "reliability_sql", "sql_section", ("spider_dir", "pg_dsn")),
    Part("sandbox", "reliability_sandbox", "sandbox_section"),
    Part("server-fuzz", "reliability_fuzz", "fuzz_section"),
    Part("server-load", "reliability_load", "load_section", ("clients", "seconds")),
)
OPTION_NAMES = {"batch_runs": "runs"}
"""A bench option passed to a part under another keyword (crash_section(runs=...))."""


async def run_part(part: Part, workdir: Path, options: dict[str, Any]) -> Section:
    """One part, its failure to run turned into a failed section (the others still run)."""
    started = time.perf_counter()
    kwargs = {OPTION_NAMES.get(key, key): options[key] for key in part.options if options.get(key) is not None}
    function = part.load()
    if "workdir" in inspect.signature(function).parameters:  # emptied first: parts use fixed run ids and files
        kwargs["workdir"] = workdir / part.name
        shutil.rmtree(kwargs["workdir"], ignore_errors=True)
        kwargs["workdir"].mkdir(parents=True)
    try:
        if inspect.iscoroutinefunction(function):
            section = await function(**kwargs)
        else:  # in a worker thread: a blocking part may run its own event loop
            section = await asyncio.to_thread(function, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported as this part's failure; the other parts still run
        section = Section(name=part.name, ok=False, problems=[f"the part did not run to its end: "
                                                              f"{type(exc).__name__}: {exc}"],
                          lines=traceback.format_exception_only(exc))
    if not section.seconds:
        section.seconds = round(time.perf_counter() - started, 1)
    section.name = part.name  # the name --parts takes, also when the part failed to run
    return section


async def reliability(workdir: Path, parts: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """Every chosen part in turn; the report holds each section and the totals."""
    chosen = [p for p in PARTS if not parts or p.name in parts]
    unknown = sorted(set(parts or []) - {p.name for p in PARTS})
    if unknown:
        raise ValueError(f"unknown parts: {', '.join(unknown)}; known: {', '.join(p.name for p in PARTS)}")
    sections = [await run_part(part, workdir, options) for part in chosen]
    return {"sections": [s.model_dump() for s in sections], "totals": totals_of(sections),
            "ok": all(s.ok for s in sections), "summary": summary_line(sections),
            "options": {k: str(v) for k, v in options.items() if v is not None}, "environment": environment()}


def section_rows(report: dict[str, Any]) -> list[list[Any]]:
    return [[s["name"], "ok" if s["ok"] else "FAILED", s["runs"], s["faults_injected"], s["traces_verified"],
             s["traces_failed"], s["events_lost"], s["writes_made"], s["seconds"]] for s in report["sections"]]


HEADER = ["part", "result", "runs", "faults injected", "traces verified", "traces failed", "events lost",
          "writes made", "seconds"]


def markdown(report: dict[str, Any]) -> str:
    parts = ["# bench reliability", "", md_table(HEADER, section_rows(report)), ""]
    for section in report["sections"]:
        parts += [f"## {section['name']}", ""]
        parts += section["lines"] or ["(no figures)"]
        if section["problems"]:
            parts += ["", "Problems:"] + [f"- {p}" for p in section["problems"]]
        parts.append("")
    parts.append(report["summary"])
    return "\n".join(parts) + "\n"
