"""`refinegraph sql`: answer a question from a database, check a statement, make a read-only role.

    refinegraph sql "How many singers?" --db shop.sqlite          (a SQL graph, the model writes SQL)
    refinegraph sql --db shop.sqlite --execute "SELECT ..."       (the guard and limits, no model)
    refinegraph sql grant --db postgresql://admin@host/db --role reader --schema shop [--apply]

Exit codes: 0 answered; 1 no answer: the SQL was refused, failed or passed a limit (the
reason on stdout; with --json `"sql": null`, `"error"` and `"refused_sql"`); 2 the request
was wrong (options, an unreadable database, a schema that does not exist, a PostgreSQL role
with more privilege than reading needs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from refinegraph.cli.common import err, fail, out

if TYPE_CHECKING:  # pydantic's config is imported when a command runs, not for --help
    from refinegraph.config import Config


class _AskByDefault(TyperGroup):
    """`refinegraph sql QUESTION ...` is `refinegraph sql ask QUESTION ...`: a question is
    not a subcommand's name."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["ask", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_AskByDefault, no_args_is_help=True, add_completion=False)  # its help: refinegraph.cli.app.GROUPS


def _open(db: str, cfg: Config) -> Any:
    """The database under the config's [sql] limits, checked (exit 2 when unusable)."""
    from refinegraph.tools.sql import connect
    from refinegraph.tools.sql.engines import PreflightError

    limits = cfg.sql
    try:
        database = connect(db, timeout_s=limits.timeout_s, max_rows=limits.max_rows, max_bytes=limits.max_bytes,
                           memory_mb=limits.memory_mb, allow_privileged_role=limits.allow_privileged_postgres_role)
        database.preflight()
    except (ValueError, FileNotFoundError, PreflightError) as exc:
        fail(f"database {db}: {exc}")
    return database


def _print_rows(columns: list[str], rows: list[Any]) -> None:
    table = Table(*columns)
    for row in rows[:50]:
        table.add_row(*["NULL" if v is None else escape(str(v)) for v in row])
    out.print(table)


def _no_answer(as_json: bool, error: str, refused_sql: str | None, extra: dict[str, Any]) -> None:
    """Refused or failed SQL: never printed as the answer; exit 1."""
    if as_json:
        typer.echo(json.dumps({"sql": None, "error": error, "refused_sql": refused_sql, "columns": [], "rows": [],
                               **extra}, ensure_ascii=False, default=str))
    else:
        typer.echo(f"no answer: {error}")
        if refused_sql:
            err.print(f"refused SQL: {escape(refused_sql)}", highlight=False)
        if "run_id" in extra:
            typer.echo(f"run: {extra['run_id']}")
    raise typer.Exit(1)


def _execute(db: str, sql: str, cfg: Config, as_json: bool) -> None:
    result = _open(db, cfg).execute_sync(sql)
    extra = {"error_class": result.error_class, "elapsed_ms": result.elapsed_ms}
    if not result.ok:
        _no_answer(as_json, f"{result.error_class}: {result.error}", result.sql, extra)
    if as_json:
        typer.echo(json.dumps({"sql": result.sql, "columns": result.columns, "rows": [list(r) for r in result.rows],
                               "truncated": result.truncated, "result_bytes": result.result_bytes, **extra},
                              ensure_ascii=False, default=str))
        return
    typer.echo(result.sql)
    _print_rows(result.columns, result.rows)
    if result.truncated:
        err.print(f"(the first {len(result.rows)} rows: the row cap)", highlight=False)


@app.command("ask")
def ask(
    question: str | None = typer.Argument(None, help="A question about the database (not with --execute)."),
    db: str = typer.Option(..., "--db", help="SQLite path, postgresql://... (?schema=S), or duckdb:///path."),
    execute: str | None = typer.Option(None, "--execute", help="Run this statement through the guard and limits, "
                                                               "with no model."),
    graph: str = typer.Option("csc-sql", "--graph", help="sql-greedy, sql-sc or csc-sql."),
    evidence: str | None = typer.Option(None, "--evidence", help="Extra knowledge (BIRD's evidence)."),
    model: str | None = typer.Option(None, "--model", help="Play every role with this configured model."),
    config: Path | None = typer.Option(None, "--config", help="TOML config."),
    budget_tokens: int | None = typer.Option(None, "--budget-tokens", help="Token budget of the run."),
    param: list[str] = typer.Option([], "--param", "-p", help="Graph parameter KEY=VALUE (e.g. n=8)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    approve: bool = typer.Option(False, "--approve", help="Show the chosen SQL and wait for yes, no or an "
                                 "edited statement on stdin before it runs (see `refinegraph approve`)."),
    by: str | None = typer.Option(None, "--by", help="With --approve: who decides (default: your user name)."),
) -> None:
    """Answer QUESTION from a database: prints the SQL, the result table, then `run: <run_id>`."""
    from refinegraph.budget import Budget
    from refinegraph.cli.approve_cmd import sql_with_approval
    from refinegraph.cli.running import prepare as _prepare
    from refinegraph.cli.running import run_or_exit as _run_or_exit
    from refinegraph.config import ConfigError, load_config
    from refinegraph.registry import UnknownGraph

    if (question is None) == (execute is None):
        fail("give either a QUESTION or --execute SQL")
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc))
    if execute is not None:
        _execute(db, execute, cfg, as_json)
        return
    try:
        cfg, params = _prepare(graph, config, model, param)
        budget = Budget(max_tokens=budget_tokens)
    except (UnknownGraph, ValueError) as exc:
        fail(str(exc))
    _open(db, cfg)
    task = {"question": question, "db": db, **({"evidence": evidence} if evidence else {})}
    if approve:
        result = sql_with_approval(graph, task, cfg, params, budget, by=by, as_json=as_json)
    else:
        result = _run_or_exit(graph, task, cfg, params, budget, as_json)
    state = result.state
    extra = {"run_id": result.run_id, "stop_reason": result.stop_reason, "usage": result.usage,
             "model_calls": result.model_calls}
    if state.get("answer") is None:
        _no_answer(as_json, state.get("error") or f"no SQL answered (stop: {result.stop_reason})",
                   state.get("refused_sql"), extra)
    if as_json:
        typer.echo(json.dumps({"sql": state.get("sql"), "columns": state.get("columns", []),
                               "rows": state.get("rows", []), **extra}, ensure_ascii=False, default=str))
        return
    typer.echo(state["sql"])
    _print_rows(state.get("columns", []), state.get("rows", []))
    err.print(f"stop: {result.stop_reason}  calls: {result.model_calls}  tokens: {result.usage['total_tokens']}",
              highlight=False)
    typer.echo(f"run: {result.run_id}")


@app.command("grant")
def grant(
    db: str = typer.Option(..., "--db", help="postgresql://ADMIN@host/database (an admin: --apply runs as it)."),
    role: str = typer.Option(..., "--role", help="The read-only role to make (or to fix up)."),
    schema: str = typer.Option(..., "--schema", help="The one schema it may read."),
    apply: bool = typer.Option(False, "--apply", help="Run the statements (default: print them)."),
    password_env: str | None = typer.Option(None, "--password-env", help="Environment variable holding the "
                                                                         "role's password (LOGIN needs one "
                                                                         "unless the server trusts the host)."),
    config: Path | None = typer.Option(None, "--config", help="TOML config: its [sql] limits go on the role."),
) -> None:
    """Print (or --apply) the SQL of a PostgreSQL role that may read SCHEMA and nothing else."""
    import os
    from urllib.parse import urlparse

    from refinegraph.config import ConfigError, load_config
    from refinegraph.tools.sql.grant import GrantError, ReadOnlyRole
    from refinegraph.tools.sql.grant import apply as apply_grant

    parsed = urlparse(db)
    if parsed.scheme.split("+")[0] not in ("postgresql", "postgres") or not parsed.path.strip("/"):
        fail(f"--db must be a PostgreSQL URL with a database name, got {db!r}")
    try:
        limits = load_config(config).sql
    except ConfigError as exc:
        fail(str(exc))
    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            fail(f"--password-env names {password_env}, which is not set")
    dsn = parsed._replace(scheme="postgresql", query="").geturl()
    spec = ReadOnlyRole(role=role, schema=schema, database=parsed.path.strip("/"),
                        statement_timeout_ms=int(limits.timeout_s * 1000), temp_file_limit_kb=limits.memory_mb * 1024,
                        work_mem_kb=max(64, limits.memory_mb * 1024 // 4), password=password)
    try:
        statements = spec.statements()
    except GrantError as exc:
        fail(str(exc))
    if apply:
        try:
            import psycopg
        except ImportError:
            fail("--apply needs psycopg: pip install 'refinegraph[postgres]'")
        try:
            statements = apply_grant(dsn, spec)
        except GrantError as exc:
            fail(str(exc))
        except psycopg.Error as exc:  # permission denied, unreachable, ...: nothing was committed
            fail(f"{type(exc).__name__}: {str(exc).strip()}", 1)
    for statement in statements:
        shown = statement.replace(f"PASSWORD '{password}'", "PASSWORD '***'") if password else statement
        typer.echo(shown + ";")
    if apply:
        err.print(f"applied: role {role!r} may read schema {schema!r}; connect as it, e.g. "
                  f"postgresql://{role}@{parsed.hostname or 'localhost'}/{spec.database}?schema={schema}",
                  highlight=False)
