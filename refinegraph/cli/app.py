"""Entry point: `refinegraph run | resume | graphs | trace ... | bench ...`.

Commands import the runtime they need in their bodies: `--help` and `graphs` start in a
fraction of a second because they never import pydantic, langgraph or a model SDK
(tests/test_cli_startup.py checks which modules they import).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from refinegraph.cli import approve_cmd, batch_cmd, serve_cmd
from refinegraph.cli.common import err, fail, open_store, out, print_json, resolve_run, run_until_signal
from refinegraph.cli.lazy import LazyGroup, lazy_root
from refinegraph.cli.running import prepare as _prepare
from refinegraph.cli.running import report_failure as _failed
from refinegraph.cli.running import run_or_exit as _run_or_exit
from refinegraph.cli.status import status_line

if TYPE_CHECKING:
    from refinegraph.runner import RunResult


def _trace() -> typer.Typer:
    from refinegraph.cli import trace_cmds

    return trace_cmds.app


def _bench() -> typer.Typer:
    from refinegraph.cli import bench_allocation, bench_cmds, bench_methods  # noqa: F401  (they add commands)

    return bench_cmds.app


def _route() -> typer.Typer:
    from refinegraph.cli import route_cmd

    return route_cmd.app


def _sql() -> typer.Typer:
    from refinegraph.cli import sql_cmds

    return sql_cmds.app


GROUPS = {
    "trace": LazyGroup("List, read, verify, export and replay decision traces.", _trace),
    "bench": LazyGroup("Benchmarks: print figures side by side and write a report.", _bench),
    "route": LazyGroup("Routing calibrated from recorded outputs (ACAR's sigma cut-points).", _route),
    "sql": LazyGroup("Answer questions from a database; check SQL; make a read-only PostgreSQL role. "
                     "`refinegraph sql QUESTION --db URL` is `sql ask`.", _sql),
}
"""The subcommand groups, imported when used (see refinegraph.cli.lazy)."""

app = typer.Typer(cls=lazy_root(GROUPS), help="Verify-and-refine LLM agents with auditable decision traces.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
serve_cmd.register(app)
batch_cmd.register(app)
approve_cmd.register(app)


def _report(result: RunResult, as_json: bool) -> None:
    if as_json:
        print_json(result.model_dump())
    else:
        typer.echo(result.answer or "")
        cost = f"  cost: ${result.cost_usd:.6f}" if result.cost_usd is not None else ""
        err.print(f"stop: {result.stop_reason}  calls: {result.model_calls}  "
                  f"tokens: {result.usage['total_tokens']}{cost}", highlight=False)
        typer.echo(f"run: {result.run_id}")


@app.command("run")
def run_cmd(
    graph: str = typer.Argument(..., help="A registered graph (see `refinegraph graphs`)."),
    task: str | None = typer.Argument(None, help="The input: a question or task (or give --messages)."),
    messages: Path | None = typer.Option(None, "--messages",
                                          help="A JSON file of chat messages: run on that conversation instead."),
    model: str | None = typer.Option(None, "--model", help="Play every role with this configured model."),
    config: Path | None = typer.Option(None, "--config", help="TOML config (default $REFINEGRAPH_HOME/config.toml)."),
    budget_tokens: int | None = typer.Option(None, "--budget-tokens", help="Token budget of the run."),
    budget_calls: int | None = typer.Option(None, "--budget-calls", help="Model-call budget of the run."),
    budget_seconds: float | None = typer.Option(None, "--budget-seconds", help="Wall-time budget."),
    param: list[str] = typer.Option([], "--param", "-p", help="Graph parameter KEY=VALUE (JSON value)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Run GRAPH on TASK (or a conversation, --messages); print the answer, then `run: <run_id>`.

    Exit codes: 0 answered (also when stopped by the budget), 1 the run failed (recorded
    in its trace), 2 the request was wrong (unknown graph or model, bad config or params).
    """
    from refinegraph.budget import Budget
    from refinegraph.registry import UnknownGraph

    try:
        cfg, params = _prepare(graph, config, model, param)
        budget = Budget(max_tokens=budget_tokens, max_calls=budget_calls, max_seconds=budget_seconds)
        conversation = _conversation_file(messages) if messages else None
        if (task is None) == (conversation is None):
            raise ValueError("give either TASK or --messages FILE.json")
    except (UnknownGraph, ValueError) as exc:
        fail(str(exc))
    _report(_run_or_exit(graph, task, cfg, params, budget, as_json, conversation), as_json)


def _conversation_file(path: Path) -> list[dict]:
    """The conversation in `path`, or a ValueError naming the file and what is wrong."""
    from refinegraph.conversation import check_conversation

    try:
        return check_conversation(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:  # FILE:LINE:COLUMN, as editors and compilers say it
        raise ValueError(f"--messages {path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"--messages {path}: {exc}") from None


@app.command("resume")
def resume_cmd(
    run_id: str = typer.Argument(..., help="The interrupted run."),
    config: Path | None = typer.Option(None, "--config"),
    force: bool = typer.Option(False, "--force", help="Resume even if its process seems alive."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Finish an interrupted run; finished model calls are served from its trace, not paid again."""
    from refinegraph.config import ConfigError, load_config
    from refinegraph.models import ModelUnavailable
    from refinegraph.runner import RunFailed, RunNotResumable, TraceUnusable, resume
    from refinegraph.trace.store import TraceStoreError

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc))
    store = open_store(cfg)
    full = resolve_run(store, run_id)
    try:
        with status_line(as_json) as progress:
            result = run_until_signal(resume(full, config=cfg, store=store, force=force, on_event=progress),
                                      [full], as_json)
    except RunFailed as exc:
        _failed(exc, as_json)
    except (RunNotResumable, ConfigError) as exc:
        fail(str(exc))
    except (ModelUnavailable, TraceUnusable, TraceStoreError) as exc:
        fail(str(exc), 1)
    _report(result, as_json)


@app.command("graphs")
def graphs_cmd() -> None:
    """The registered graphs."""
    from refinegraph.registry import graph_catalog

    for name, description in graph_catalog():
        out.print(f"[bold]{name}[/]  {description}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
