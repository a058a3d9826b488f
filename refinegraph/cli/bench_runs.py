"""Running a benchmark's (question, method) jobs: under a progress bar, at most N at once,
and, for the journaled benchmarks (gsm8k, humaneval, spider), each outcome recorded as it
comes so that a stopped run continues, and reports what every method finished."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from refinegraph.cli.common import INTERRUPTED_EXIT, err


def run_all(label: str, jobs: list[tuple[Any, str]], concurrency: int,
             one: Callable[[Any, str], Awaitable[Any]]) -> list[Any]:
    """Every (question, method) job under a progress bar, at most `concurrency` at once."""
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    async def main() -> list[Any]:
        gate = asyncio.Semaphore(concurrency)

        async def job(question: Any, method: str) -> Any:
            async with gate:
                outcome = await one(question, method)
            progress.advance(task)
            return outcome

        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err) as progress:
            task = progress.add_task(label, total=len(jobs))
            return list(await asyncio.gather(*[job(q, m) for q, m in jobs]))

    return asyncio.run(main())


STOPPED_PREFIX = "stopped-"


@dataclass
class Journaled:
    """A journaled benchmark's outcomes: all of them, or, when the run was stopped, those of
    the questions every method finished (so each method's figures cover the same questions)."""

    outcomes: list[Any]
    compared: int
    """Questions in `outcomes`."""
    total: int

    @property
    def stopped(self) -> bool:
        return self.compared < self.total

    def titled(self, title: str) -> str:
        """The report's title, saying when it covers a stopped run's common questions only."""
        return title if not self.stopped else f"{title} (stopped: {self.compared} of {self.total} done by every method)"

    def mark(self, report: dict[str, Any]) -> dict[str, Any]:
        if self.stopped:
            report["stopped"] = {"questions_by_every_method": self.compared, "questions": self.total}
        return report

    def file(self, name: str) -> str:
        """A report file's name: a stopped run's is `stopped-NAME`, so the last complete
        report (what a README links to) is never replaced by a partial one."""
        return f"{STOPPED_PREFIX}{name}" if self.stopped else name

    def save(self, out_dir: Path, report: dict[str, Any], picture: str | None) -> str:
        """questions.jsonl and summary.json (`stopped-` ones for a stopped run, the report
        marked), and the line that names them and the plot."""
        from refinegraph.bench.common import write_outcomes

        questions = write_outcomes(out_dir, self.outcomes, self.file("questions.jsonl"))
        summary = out_dir / self.file("summary.json")
        summary.write_text(json.dumps(self.mark(report), indent=2) + "\n", encoding="utf-8")
        return f"report: {summary} {questions} {picture or '(no plot: pip install matplotlib)'}"

    def exit_if_stopped(self) -> None:
        """After the report is written: a stopped run exits as interrupted (the same command continues)."""
        if self.stopped:
            raise typer.Exit(INTERRUPTED_EXIT)


def journaled(label: str, journal: Any, items: list[Any], methods: list[str], concurrency: int,
               answer: Callable[[Any, str], Awaitable[Any]]) -> Journaled:
    """Every (item, method) job the journal has not finished, each outcome recorded as it
    comes; then every outcome of the folder, in order (a stopped run continues here).
    Stopped (Ctrl-C, SIGINT), it reports what every method finished before it exits."""
    import asyncio

    every = [(item, m) for item in items for m in methods]
    jobs = journal.pending(every)
    if len(jobs) < len(every):
        err.print(f"resuming {journal.out_dir}: {len(every) - len(jobs)} done, {len(jobs)} to go",
                  highlight=False)

    async def scored(item: Any, method: str) -> Any:
        outcome = await answer(item, method)
        journal.record(outcome)
        return outcome

    try:
        run_all(label, jobs, concurrency, scored)
    except (KeyboardInterrupt, asyncio.CancelledError):
        finished = journal.finished()
        err.print(f"interrupted: {len(finished)} of {len(every)} jobs recorded in {journal.out_dir}; the same "
                  "command continues from there", highlight=False)
        common = {item.index for item in items if all((item.index, m) in finished for m in methods)}
        if not common:  # a report of nothing would replace the folder's last one
            err.print("no question is finished by every method yet: the folder's report is left as it was",
                      highlight=False)
            raise typer.Exit(INTERRUPTED_EXIT) from None
        if len(common) < len(items):
            kept = [o for o in journal.outcomes(methods) if o.question in common]
            return Journaled(kept, compared=len(common), total=len(items))
    for stale in journal.out_dir.glob(f"{STOPPED_PREFIX}*"):  # the whole report replaces a stopped one
        stale.unlink()
    return Journaled(journal.outcomes(methods), compared=len(items), total=len(items))
