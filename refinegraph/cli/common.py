"""Helpers shared by the CLI's commands: consoles, the store, clean exits."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from refinegraph.trace.redact import redact_text

if TYPE_CHECKING:  # the runtime is imported by the commands that run something, not by --help
    from refinegraph.trace.store import BaseTraceStore

T = TypeVar("T")
INTERRUPTED_EXIT = 130
"""The exit code of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells use)."""

# Piped output is not cut to 80 columns: run ids must survive a copy.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print the error (secrets redacted: a bad --db URL is echoed back) and exit with `code`."""
    err.print(f"[bold red]error:[/] {escape(redact_text(message))}", highlight=False)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """One JSON object on stdout, nothing else (for scripts)."""
    typer.echo(json.dumps(data, ensure_ascii=False))


def open_store(config: Any = None) -> BaseTraceStore:
    """The trace store (REFINEGRAPH_TRACE_STORE, the config's [trace] store, or
    $REFINEGRAPH_HOME/traces.sqlite), or a clear error if it is unusable."""
    from refinegraph.config import ConfigError, load_config
    from refinegraph.runner import default_store
    from refinegraph.trace.store import TraceStoreError

    try:
        return default_store(config or load_config())
    except ConfigError as exc:
        fail(str(exc))
    except TraceStoreError as exc:
        fail(str(exc), 1)


def resolve_run(store: BaseTraceStore, run: str) -> str:
    try:
        return store.find_run(run)
    except KeyError as exc:
        fail(str(exc.args[0]))


def run_until_signal(main: Coroutine[Any, Any, T], run_ids: list[str], as_json: bool,
                     resume_lines: list[str] | None = None) -> T:
    """`asyncio.run(main)`, where Ctrl-C (SIGINT) and SIGTERM cancel it with the signal's
    name (the runner records the run as interrupted with that reason); then the run ids
    and the exact resume line are printed, and the command exits with 130."""
    import asyncio

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, task.cancel, sig.name)  # type: ignore[union-attr]
        try:
            return await main
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(guarded())
    except (asyncio.CancelledError, KeyboardInterrupt):
        interrupted(run_ids, as_json, resume_lines)


def interrupted(run_ids: list[str], as_json: bool, resume_lines: list[str] | None = None) -> NoReturn:
    """Say which runs were interrupted and how to finish them; exit 130."""
    lines = resume_lines or [f"refinegraph resume {run_id}" for run_id in run_ids]
    if as_json:
        print_json({"status": "interrupted", "run_ids": run_ids, "run_id": run_ids[0] if len(run_ids) == 1 else None,
                    "resume": lines[0] if len(lines) == 1 else lines})
    else:
        err.print("interrupted: recorded as interrupted in the trace; finish with:", highlight=False)
        for line in lines:
            typer.echo(line, err=True)
        for run_id in run_ids:
            typer.echo(f"run: {run_id}")
    raise typer.Exit(INTERRUPTED_EXIT)
