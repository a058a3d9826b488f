"""Helpers shared by the CLI's commands: consoles, the store, clean exits."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from refinegraph.runner import default_store
from refinegraph.trace.redact import redact_text
from refinegraph.trace.store import TraceStore, TraceStoreError

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


def open_store(*, full_check: bool = False) -> TraceStore:
    """The trace store of $REFINEGRAPH_HOME, or a clear error if the file is unusable
    (`full_check`: SQLite's quick_check of every page too, as `trace verify` does)."""
    try:
        return default_store(full_check=full_check)
    except TraceStoreError as exc:
        fail(str(exc), 1)


def resolve_run(store: TraceStore, run: str) -> str:
    try:
        return store.find_run(run)
    except KeyError as exc:
        fail(str(exc.args[0]))
