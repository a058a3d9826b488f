"""What the commands that start a run share: the graph, config and --param read from the
command line, and one run's result (with its status line on a terminal) or its documented
exit code. Apart from cli.app so that the other command modules use it without importing
the app that imports them; its heavy imports happen when a command runs, not at --help."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from refinegraph.cli.common import err, fail, open_store, print_json, run_until_signal
from refinegraph.cli.status import status_line

if TYPE_CHECKING:
    from refinegraph.budget import Budget
    from refinegraph.config import Config
    from refinegraph.runner import RunFailed, RunResult


def report_failure(exc: RunFailed, as_json: bool) -> None:
    """Say why the run failed and where its trace is; exit 1."""
    if as_json:
        print_json(exc.result.model_dump())
    err.print(f"[bold red]error:[/] {escape(str(exc.cause))}", highlight=False)
    err.print(f"the failure is recorded in the trace: refinegraph trace show {exc.result.run_id}")
    if not as_json:
        typer.echo(f"run: {exc.result.run_id}")
    raise typer.Exit(1)


def prepare(graph: str, config: Path | None, model: str | None, param: list[str]) -> tuple[Config, dict]:
    """The graph checked, the config loaded (with --model applied) and --param parsed."""
    from refinegraph.config import load_config
    from refinegraph.registry import get_graph

    get_graph(graph)
    cfg = load_config(config)
    if model:
        cfg = cfg.with_model(model)
    return cfg, parse_params(param)


def run_or_exit(graph: str, task: str | dict | None, cfg: Config, params: dict, budget: Budget,
                as_json: bool, messages: list[dict] | None = None) -> RunResult:
    """The run's result, or a clear message and the documented exit code (130 on Ctrl-C or
    SIGTERM, after printing the run id and its resume line). On a terminal, without --json,
    a status line on stderr follows the run (cli.status)."""
    from refinegraph.config import ConfigError
    from refinegraph.models import ModelUnavailable
    from refinegraph.runner import RunFailed, new_run_id, run
    from refinegraph.trace.store import TraceStoreError

    run_id = new_run_id()
    store = open_store(cfg)
    try:
        with status_line(as_json) as progress:
            return run_until_signal(run(graph, task, config=cfg, params=params, budget=budget, store=store,
                                        run_id=run_id, messages=messages, on_event=progress), [run_id], as_json)
    except RunFailed as exc:
        report_failure(exc, as_json)
    except ConfigError as exc:
        fail(str(exc))
    except (ModelUnavailable, TraceStoreError) as exc:
        fail(str(exc), 1)


def parse_params(pairs: list[str]) -> dict:
    """--param KEY=VALUE pairs: each value JSON when it parses, else the text."""
    from refinegraph.config import ConfigError

    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--param takes KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params
