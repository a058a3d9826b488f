"""`refinegraph trace ...`: list, show, verify, export, replay and render (html) recorded runs;
copy runs between stores; print or apply the grants of a PostgreSQL store's application role."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from refinegraph.cli.common import err, fail, open_store, out, print_json, resolve_run

if TYPE_CHECKING:  # each command imports the runtime it needs: `--help` stays fast
    from refinegraph.trace.store import BaseTraceStore

app = typer.Typer(no_args_is_help=True, add_completion=False)  # its help: refinegraph.cli.app.GROUPS


@app.command("list")
def list_runs(limit: int = typer.Option(20, help="How many runs, newest first."),
              as_json: bool = typer.Option(False, "--json", help="One JSON array.")) -> None:
    """The recorded runs, newest first."""
    runs = open_store().runs(limit)
    if as_json:
        print_json(runs)
        return
    table = Table("run", "created (UTC)", "status", "stop", "events", "graph", "input")
    table.columns[0].no_wrap = True
    for r in runs:
        table.add_row(r["run_id"], r["created_at"][:19].replace("T", " "), r["status"], r["stop_reason"] or "",
                      str(r["events"]), r["graph"], r["input_preview"][:40])
    out.print(table)


@app.command("show")
def show(run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
         as_json: bool = typer.Option(False, "--json", help="Events as one JSON array.")) -> None:
    """The run's events in order: nodes, model calls and decisions."""
    store = open_store()
    run_id = resolve_run(store, run)
    events = store.events(run_id)
    if as_json:
        print_json(events)
        return
    info = store.run(run_id)
    out.print(f"[bold]{run_id}[/]  graph={info['graph']}  status={info['status']}  stop={info['stop_reason']}")
    for e in events:
        out.print(f"{e['seq']:>4} {e['ts'][11:23]} [cyan]{e['type']:<13}[/] {e.get('node') or '':<9} "
                  f"{escape(_summary(e))}", highlight=False)


def _summary(e: dict) -> str:
    t = e["type"]
    if t == "llm_call":
        return (f"{e['model']} role={e['role']} n={e['params']['n']} source={e['source']} "
                f"tokens={e['prompt_tokens']}+{e['completion_tokens']} {e['latency_ms']:.0f}ms")
    if t == "tool_call":
        return f"{e['model']} sample={e['sample']} {e['name']}({e['arguments'][:100]}) offered={e['offered']}"
    if t == "critique":
        return f"candidate={e['candidate']} score={e['score']} done={e['done']} via={e['parsed_with']}"
    if t == "run_finished":
        return f"stop={e['stop_reason']} calls={e['model_calls']} answer={(e['answer'] or '')[:60]!r}"
    skip = {"run_id", "seq", "ts", "node", "type"}
    return json.dumps({k: v for k, v in e.items() if k not in skip}, ensure_ascii=False)[:160]


@app.command("verify")
def verify(run: str | None = typer.Argument(None, help="Run id (or a unique prefix); none: every run."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Check the store with the database's own integrity check, then recompute hash chains;
    exit 0 when everything holds, 1 naming the first bad event of each broken run."""
    from refinegraph.trace.verify import verify_run

    store = open_store()
    damage = store.integrity_problems()
    if run is None:
        _verify_all(store, as_json)
        return
    run_id = resolve_run(store, run)
    report = verify_run(store, run_id)
    if as_json:
        print_json({**report.__dict__, "store_damage": damage})
    else:
        _print_damage(store, damage)
        if report.ok:
            out.print(f"ok: {report.events} events, chain holds{', sealed' if report.sealed else ''}")
            for note in report.notes:
                out.print(f"note: {escape(note)}", highlight=False)
        else:
            out.print(f"FAILED at event {report.bad_seq}: {escape(report.problem or '')}", highlight=False)
    raise typer.Exit(0 if report.ok and not damage else 1)


def _print_damage(store: BaseTraceStore, damage: list[str]) -> None:
    if not damage:
        return
    out.print(f"DAMAGED: the database's integrity check of {escape(store.location)} failed: "
              f"{escape('; '.join(damage[:5]))}", highlight=False)
    out.print("  copy what can still be read into a new store with SQLite's own recovery "
              "(sqlite3 FILE .recover | sqlite3 NEW) or `refinegraph trace copy`, or restore a backup", highlight=False)


def _verify_all(store: BaseTraceStore, as_json: bool) -> None:
    from refinegraph.trace.verify import verify_store

    report = verify_store(store)
    if as_json:
        print_json({"store": report.location, "ok": report.ok, "damage": report.damage,
                    "unreadable": report.unreadable, "unlisted": report.unlisted,
                    "runs": [r.__dict__ for r in report.runs]})
        raise typer.Exit(0 if report.ok else 1)
    _print_damage(store, report.damage)
    if report.unreadable:
        out.print(f"FAILED: the run listing cannot be read: {escape(report.unreadable)}", highlight=False)
        raise typer.Exit(1)
    for failed in report.failed:
        where = f"event {failed.bad_seq}" if failed.bad_seq is not None else "the run"
        out.print(f"FAILED run {failed.run_id} at {where}: {escape(failed.problem or '')}", highlight=False)
    for run_id in report.unlisted:
        out.print(f"FAILED run {run_id}: it has events but no listing (its runs row was deleted)", highlight=False)
    sealed = sum(1 for r in report.runs if r.ok and r.sealed)
    out.print(f"{len(report.runs)} runs: {len(report.runs) - len(report.failed)} hold ({sealed} sealed), "
              f"{len(report.failed)} FAILED", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


@app.command("export")
def export(run: str = typer.Argument(..., help="Run id (or a unique prefix).")) -> None:
    """The run's events as JSONL (each line with its prev_hash and hash)."""
    store = open_store()
    for line in store.iter_export(resolve_run(store, run)):
        typer.echo(line)


@app.command("replay")
def replay_cmd(run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
               config: Path | None = typer.Option(None, "--config", help="TOML config: its [sql] limits and "
                                                  "permissions for a SQL run's statements (models: recorded)."),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-run from the recorded calls only (no model is called); compare the decisions."""
    import asyncio

    from refinegraph.config import ConfigError, load_config
    from refinegraph.context import ReplayMiss
    from refinegraph.runner import RunFailed, TraceUnusable, replay
    from refinegraph.trace.store import TraceStoreError

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc))
    store = open_store(cfg)
    run_id = resolve_run(store, run)
    try:
        result = asyncio.run(replay(run_id, store=store, config=cfg))
    except RunFailed as exc:
        if isinstance(exc.cause, ReplayMiss):
            fail(f"the trace does not hold every call this run needs: {exc.cause}", 1)
        fail(str(exc), 1)
    except (TraceUnusable, TraceStoreError) as exc:
        fail(str(exc), 1)
    if as_json:
        print_json(result.model_dump())
    else:
        typer.echo(result.answer or "")
        err.print(f"replay of {run_id}: model_calls={result.model_calls} "
                  f"decisions_match={result.decisions_match} answer_matches={result.answer_matches}")
        typer.echo(f"run: {result.run_id}")
    raise typer.Exit(0 if result.decisions_match and result.answer_matches else 1)


@app.command("html")
def html_cmd(run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
             output: str = typer.Option(None, "-o", "--output",
                                        help="The page to write (default: run-<id>.html here; - for stdout).")) -> None:
    """One self-contained HTML page of the run: steps, model calls, decisions, chain status."""
    from refinegraph.trace.html import render_run

    store = open_store()
    run_id = resolve_run(store, run)
    page = render_run(store, run_id)
    if output == "-":
        typer.echo(page, nl=False)
        return
    path = Path(output or f"run-{run_id[:12]}.html")
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc}", 1)
    err.print(f"wrote {escape(str(path))}", highlight=False)


@app.command("copy")
def copy_cmd(source: str = typer.Option(..., "--from", help="The store to read: a path, sqlite:///path or "
                                                             "postgresql://user@host/db."),
             target: str = typer.Option(..., "--to", help="The store to write (made if missing)."),
             skip_conflicts: bool = typer.Option(False, "--skip-conflicts",
                                                 help="Leave out runs the target holds with another history "
                                                      "(default: refuse, writing nothing)."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Copy every run of one store into another, as stored, and verify each in the target.

    Reads go through the database, so this is how to copy a live SQLite store (never `cp`).
    Copying again adds only what is new: runs resumed since are extended, the rest skipped.
    A PostgreSQL URL picks its schema with ?options=-csearch_path%3Dname (default refinegraph).
    """
    from refinegraph.trace.merge import MergeConflict, copy_store
    from refinegraph.trace.store import TraceStoreError
    from refinegraph.trace.store import open_store as open_location

    if "://" not in source or source.startswith("sqlite:"):
        path = Path(source.removeprefix("sqlite:///") if source.startswith("sqlite:///") else source)
        if not path.is_file():
            fail(f"no trace store at {path} to copy from")
    try:
        with open_location(source) as src, open_location(target) as dst:
            report = copy_store(src, dst, on_conflict="skip" if skip_conflicts else "refuse")
            where = dst.location
    except MergeConflict as exc:
        fail(str(exc), 1)
    except (TraceStoreError, ValueError) as exc:
        fail(str(exc), 1)
    if as_json:
        print_json({"to": where, "ok": report.ok, **{k: v for k, v in report.__dict__.items()}})
    else:
        out.print(f"{escape(where)}: {report.summary()}", highlight=False)
        for run_id, problem in report.unverified.items():
            out.print(f"NOT VERIFIED run {run_id}: {escape(problem)}", highlight=False)
        for run_id in report.conflicts:
            out.print(f"skipped run {run_id}: the target holds it with another history", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


@app.command("grant")
def grant_cmd(role: str = typer.Option(..., "--role", help="The application's PostgreSQL role."),
              store: str | None = typer.Option(None, "--store", help="The PostgreSQL store (default: the "
                                                                      "configured one)."),
              apply: bool = typer.Option(False, "--apply", help="Run the statements (as the tables' owner); "
                                                                 "default: print them.")) -> None:
    """The grants of an application role on a PostgreSQL store: INSERT and SELECT on its
    history, UPDATE of a run's listing columns only (see docs/traces.md)."""
    from refinegraph.trace.postgres import grant_statements
    from refinegraph.trace.store import TraceStoreError
    from refinegraph.trace.store import open_store as open_location

    try:
        opened = open_location(store) if store else open_store()
    except TraceStoreError as exc:
        fail(str(exc), 1)
    try:
        if opened.kind != "postgres":
            fail(f"{opened.location} is not a PostgreSQL store: grants are PostgreSQL's "
                 "(a SQLite store is guarded by its file's permissions)")
        try:
            statements = opened.grant(role) if apply else grant_statements(opened.schema, role)  # type: ignore[attr-defined]
        except ValueError as exc:
            fail(str(exc))
        except TraceStoreError as exc:
            fail(str(exc), 1)
    finally:
        opened.close()
    for statement in statements:
        typer.echo(f"{statement};")
    if apply:
        err.print(f"granted to {escape(role)} on {escape(opened.location)}", highlight=False)
