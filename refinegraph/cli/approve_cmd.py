"""`refinegraph sql --approve` and `refinegraph approve RUN`: a person decides on the SQL first.

`sql --approve` shows the SQL the graph chose on stderr and reads one answer line from stdin:
`y`/`yes` runs it, `n`/`no` refuses it, anything else is an edited statement (it passes the
SQL guard before it runs). At the end of stdin with no answer the run keeps waiting, and
`refinegraph approve RUN --yes | --no | --edit SQL` decides it later (also for runs a
server left waiting). Exit codes: 0 the SQL ran, 1 refused (by the person, or the guard
refused the edit), 2 a bad request (not waiting, a malformed decision), 3 still waiting.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from refinegraph.cli.common import err, fail, open_store, out, print_json, resolve_run

if TYPE_CHECKING:  # the runtime (langgraph, pydantic) is imported when a command runs, not for --help
    from refinegraph import approval
    from refinegraph.budget import Budget
    from refinegraph.config import Config
    from refinegraph.runner import RunResult

WAITING_EXIT = 3
REFUSED_EXIT = 1
REFUSED = {"refused_by_human", "edit_refused"}


def default_by() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): say so rather than guess
        return "unknown"


def answer_to_decision(line: str, by: str) -> approval.Decision | None:
    """One answer line as a decision; None for a blank line (ask again)."""
    from refinegraph import approval

    text = line.strip()
    if not text:
        return None
    if text.lower() in {"y", "yes"}:
        return approval.Decision(decision="approve", by=by, via="cli")
    if text.lower() in {"n", "no"}:
        return approval.Decision(decision="refuse", by=by, via="cli")
    return approval.Decision(decision="edit", sql=text, by=by, via="cli")


def _show(pending: approval.PendingApproval) -> None:
    err.print(f"[bold]The graph chose this SQL[/] (run {pending.run_id}):", highlight=False)
    err.print(escape(pending.sql), highlight=False)
    err.print(escape("Run it? [y]es, [n]o, or type an edited statement on one line: "), end="", highlight=False)


def _waiting(pending: approval.PendingApproval, as_json: bool) -> None:
    from refinegraph import approval

    run_id = pending.run_id
    if as_json:
        print_json({"sql": None, "run_id": run_id, "stop_reason": approval.AWAITING_APPROVAL,
                    "pending": pending.model_dump()})
    err.print(f"no answer: run {run_id} waits for approval; decide it with "
              f"refinegraph approve {run_id} --yes | --no | --edit SQL", highlight=False)
    raise typer.Exit(WAITING_EXIT)


def _decide(run_id: str, decision: approval.Decision, cfg: Config) -> RunResult:
    import asyncio

    from refinegraph import approval
    from refinegraph.config import ConfigError
    from refinegraph.models import ModelUnavailable
    from refinegraph.runner import RunFailed
    from refinegraph.trace.store import TraceStoreError

    try:
        return asyncio.run(approval.decide(run_id, decision, config=cfg, store=open_store()))
    except RunFailed as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc.cause))}", highlight=False)
        raise typer.Exit(1) from None
    except (approval.NotAwaitingApproval, approval.DecisionRefused, ConfigError) as exc:
        fail(str(exc))
    except (ModelUnavailable, TraceStoreError) as exc:
        fail(str(exc), 1)


def refusal_exit(result: RunResult, as_json: bool) -> None:
    """A refused run: its reason and the refused statement (never as the answer), exit 1."""
    if result.stop_reason not in REFUSED:
        return
    state = result.state
    if as_json:
        print_json({"sql": None, "refused_sql": state.get("refused_sql"), "error": state.get("error"),
                    "columns": [], "rows": [], "run_id": result.run_id, "stop_reason": result.stop_reason})
    else:
        typer.echo(f"refused ({result.stop_reason}): {state.get('error')}")
        typer.echo(f"run: {result.run_id}")
    raise typer.Exit(REFUSED_EXIT)


def sql_with_approval(graph: str, task: dict[str, Any], cfg: Config, params: dict[str, Any], budget: Budget,
                      *, by: str | None, as_json: bool) -> RunResult:
    """`refinegraph sql --approve`: run until the graph waits, ask on stdin, continue."""
    import asyncio

    from refinegraph import approval
    from refinegraph.config import ConfigError
    from refinegraph.models import ModelUnavailable
    from refinegraph.runner import RunFailed
    from refinegraph.trace.store import TraceStoreError

    try:
        result = asyncio.run(approval.start(graph, task, config=cfg, params=params, budget=budget,
                                            store=open_store()))
    except RunFailed as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc.cause))}", highlight=False)
        raise typer.Exit(1) from None
    except ConfigError as exc:
        fail(str(exc))
    except (ModelUnavailable, TraceStoreError) as exc:
        fail(str(exc), 1)
    pending = approval.pending(result)
    if pending is None:  # nothing was chosen (every candidate failed, the budget): nothing to ask
        return result
    decision = None
    while decision is None:
        _show(pending)
        line = sys.stdin.readline()
        if not line:
            _waiting(pending, as_json)
        decision = answer_to_decision(line, by or default_by())
    result = _decide(pending.run_id, decision, cfg)
    refusal_exit(result, as_json)
    return result


def register(app: typer.Typer) -> None:
    @app.command("approve")
    def approve_cmd(
        run_id: str = typer.Argument(..., help="A run that waits for approval (or a unique prefix)."),
        yes: bool = typer.Option(False, "--yes", help="Run the SQL as the graph chose it."),
        no: bool = typer.Option(False, "--no", help="Refuse it: nothing runs."),
        edit: str | None = typer.Option(None, "--edit", help="Run this statement instead (guarded first)."),
        by: str | None = typer.Option(None, "--by", help="Who decides (recorded; default: your user name)."),
        config: Path | None = typer.Option(None, "--config", help="TOML config."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Show the SQL a run waits to have approved, or decide it: --yes, --no or --edit SQL."""
        from refinegraph import approval
        from refinegraph.config import load_config

        store = open_store()
        full = resolve_run(store, run_id)
        chosen = [flag for flag, given in (("--yes", yes), ("--no", no), ("--edit", edit is not None)) if given]
        if len(chosen) > 1:
            fail(f"give one decision, not {' and '.join(chosen)}")
        try:
            pending = approval.pending_run(full, store=store)
            if not chosen:
                print_json(pending.model_dump()) if as_json else typer.echo(pending.sql)
                return
            kind = "approve" if yes else "refuse" if no else "edit"
            decision = approval.as_decision({"decision": kind, "sql": edit, "by": by or default_by(), "via": "cli"})
        except (approval.NotAwaitingApproval, approval.DecisionRefused) as exc:
            fail(str(exc))
        result = _decide(full, decision, load_config(config))
        refusal_exit(result, as_json)
        _print_result(result, as_json)


def _print_result(result: RunResult, as_json: bool) -> None:
    from rich.table import Table

    state = result.state
    if as_json:
        print_json({"sql": state.get("sql"), "columns": state.get("columns", []), "rows": state.get("rows", []),
                    "run_id": result.run_id, "stop_reason": result.stop_reason})
        return
    typer.echo(state.get("sql") or "(no SQL)")
    table = Table(*state.get("columns", []))
    for row in state.get("rows", [])[:50]:
        table.add_row(*["NULL" if v is None else escape(str(v)) for v in row])
    out.print(table)
    typer.echo(f"run: {result.run_id}")
