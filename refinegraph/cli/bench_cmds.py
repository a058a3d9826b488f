"""`refinegraph bench ...`: commands that measure and print figures, and write a report."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks: print figures side by side and write a report.", no_args_is_help=True)
