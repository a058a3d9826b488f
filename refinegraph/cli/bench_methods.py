"""`refinegraph bench gsm8k` and `refinegraph bench pool`: the answer methods side by side.

Both run every method on every question (progress bar, --concurrency), then print a table
and write a report folder: questions.jsonl (one line per question and method),
summary.json (figures, params applied per method), accuracy.png.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from refinegraph.cli.bench_cmds import app
from refinegraph.cli.bench_runs import journaled, run_all
from refinegraph.cli.common import err, out

GSM8K_GRAPHS = "greedy,self-consistency,adaptive-sc,best-of-n,self-refine,sets,magicore,acar"
POOL_GRAPHS = "greedy,self-consistency,adaptive-sc,acar"


def _methods(graphs: str) -> list[str]:
    return list(dict.fromkeys(g.strip() for g in graphs.split(",") if g.strip()))


def _unknown(methods: list[str]) -> list[str]:
    """The methods whose graph nobody registered."""
    from refinegraph.bench.common import graph_of
    from refinegraph.registry import UnknownGraph, get_graph

    missing = []
    for method in methods:
        try:
            get_graph(graph_of(method))
        except UnknownGraph:
            missing.append(method)
    return missing


def _known_graphs() -> str:
    from refinegraph.registry import list_graphs

    return ", ".join(spec.name for spec in list_graphs())


def _resolve_all(methods: list[str], pairs: list[str], optional: dict[str, dict[str, Any]] | None = None
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per method, the params it runs with, and what summary.json records of them."""
    from refinegraph.bench.common import graph_of, resolve_params, split_params
    from refinegraph.cli.running import parse_params as _params

    shared, own = split_params(_params(pairs), methods)
    params, record = {}, {}
    for method in methods:
        defaults = (optional or {}).get(graph_of(method), {})
        params[method], dropped = resolve_params(method, {**defaults, **shared}, own[method])
        record[method] = {"applied": params[method], "not_taken": dropped}
    return params, record


def _table(title: str, summary: list[dict[str, Any]], columns: list[tuple[str, Callable[[dict], str]]]) -> None:
    table = Table(title=title)
    for name, _ in columns:
        table.add_column(name, justify="left" if name == "method" else "right")
    for row in summary:
        table.add_row(*[render(row) for _, render in columns])
    out.print(table)


def _config_for(method: str, cfg: Any) -> Any:
    """The config a method label runs with: `graph@model` has that model play every role."""
    _, at, model = method.partition("@")
    return cfg.with_model(model) if at else cfg


@app.command("gsm8k")
def gsm8k_cmd(
    graphs: str = typer.Option(GSM8K_GRAPHS, "--graphs", help="Comma-separated graphs (see `refinegraph graphs`)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="The first N questions."),
    model: str | None = typer.Option(None, "--model", help="Configured model for every role."),
    config: Path | None = typer.Option(None, "--config", help="TOML config."),
    budget_tokens: int = typer.Option(1500, "--budget", min=1,
                                      help="Token budget per question, the same for every method: methods are "
                                           "compared at equal token budget."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Runs at once."),
    param: list[str] = typer.Option([], "--param", "-p",
                                    help="KEY=VALUE for every graph that takes KEY; GRAPH.KEY=VALUE for one."),
    data: Path | None = typer.Option(None, "--data", help="A GSM8K-format jsonl instead of the installed test set."),
    out_dir: Path = typer.Option(Path("bench-reports/gsm8k"), "--out", help="Report folder."),
) -> None:
    """GSM8K accuracy of the answer methods at equal token budget per question, with a plot."""
    from refinegraph.bench.common import plot, summarize
    from refinegraph.bench.gsm8k import answer, load_questions
    from refinegraph.config import ConfigError, load_config

    methods = _methods(graphs)
    missing = _unknown(methods)
    if missing:
        err.print(f"error: unknown graph(s) {', '.join(missing)}; known graphs: {_known_graphs()}", markup=False)
        raise typer.Exit(2)
    try:
        questions = load_questions(data, limit=limit)
        cfg = load_config(config)
        if model:
            cfg = cfg.with_model(model)
        params, applied = _resolve_all(methods, param)
        configs = {m: _config_for(m, cfg) for m in methods}
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc

    from refinegraph.bench.gsm8k import Outcome
    from refinegraph.bench.journal import Journal, JournalMismatch, model_identity

    try:
        journal = Journal(out_dir, {"benchmark": "gsm8k", "data": data.resolve().name if data else "GSM8K test",
                                    "questions": len(questions), "budget_tokens": budget_tokens,
                                    "model": cfg.model_for_role("solver"),
                                    "model_spec": model_identity(cfg.models[cfg.model_for_role("solver")])}, Outcome,
                          methods=applied)
    except JournalMismatch as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    finished = journaled("gsm8k", journal, questions, methods, concurrency,
                          lambda q, m: answer(q, m, configs[m], params[m], budget_tokens))
    outcomes = finished.outcomes
    summary = summarize(outcomes, methods)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = data.name if data else "GSM8K test"
    title = finished.titled(f"{source}: {len(questions)} questions, model {cfg.model_for_role('solver')}, "
                            f"budget {budget_tokens} tokens/question")
    picture = plot(out_dir, summary, title, filename=finished.file("accuracy.png"))
    saved = finished.save(out_dir, {"title": title, "questions": len(questions), "methods": methods,
                                    "budget_tokens": budget_tokens, "model": cfg.model_for_role("solver"),
                                    "params": applied, "summary": summary}, picture)
    _table(title, summary, [
        ("method", lambda r: r["method"]), ("accuracy", lambda r: f"{100 * r['accuracy']:.1f}%"),
        ("mean tokens", lambda r: f"{r['mean_tokens']:.0f}"), ("mean calls", lambda r: f"{r['mean_calls']:.2f}"),
        ("s/question", lambda r: f"{r['mean_seconds']:.1f}"),
        ("acc per 1k tokens", lambda r: "-" if r["accuracy_per_1k_tokens"] is None
         else f"{r['accuracy_per_1k_tokens']:.3f}"),
        ("errors", lambda r: str(r["errors"]))])
    out.print(saved, highlight=False)
    finished.exit_if_stopped()


@app.command("humaneval")
def humaneval_cmd(
    sample: int | None = typer.Option(None, "--sample", min=1, help="N problems drawn with --seed (default: all)."),
    seed: int = typer.Option(0, "--seed", help="The seed of --sample."),
    methods_arg: str = typer.Option("greedy,code-filter", "--methods",
                                    help="greedy (one program, temperature 0) and/or code-filter (n programs, "
                                         "the first passing the docstring's examples)."),
    model: str | None = typer.Option(None, "--model", help="Configured model for every role."),
    config: Path | None = typer.Option(None, "--config", help="TOML config."),
    budget_tokens: int = typer.Option(3000, "--budget", min=1, help="Token budget per problem, every method."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Runs at once."),
    param: list[str] = typer.Option([], "--param", "-p", help="code-filter parameter KEY=VALUE for every method."),
    data: Path | None = typer.Option(None, "--data", help="A HumanEval-format jsonl(.gz), not the installed one."),
    out_dir: Path = typer.Option(Path("bench-reports/humaneval"), "--out", help="Report folder."),
) -> None:
    """HumanEval pass@1 of one greedy program against code-filter, scored on the hidden tests."""
    from refinegraph.bench.common import plot, summarize
    from refinegraph.bench.humaneval import METHODS, Outcome, answer, load_problems
    from refinegraph.bench.journal import Journal, JournalMismatch, model_identity
    from refinegraph.cli.running import parse_params as _params
    from refinegraph.config import ConfigError, load_config
    from refinegraph.tools.code.bwrap import find_bwrap

    methods = _methods(methods_arg)
    try:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
        if find_bwrap() is None:
            raise ValueError("HumanEval runs model-written programs, only under bubblewrap: install it "
                             "(apt-get install bubblewrap)")
        problems = load_problems(data, sample=sample, seed=seed)
        cfg = load_config(config)
        if model:
            cfg = cfg.with_model(model)
        params = _params(param)
        solver = cfg.model_for_role("solver")
        journal = Journal(out_dir, {"benchmark": "humaneval", "data": data.resolve().name if data else "HumanEval",
                                    "problems": [p.index for p in problems],
                                    "budget_tokens": budget_tokens, "params": params, "model": solver,
                                    "model_spec": model_identity(cfg.models[solver])}, Outcome,
                          methods={m: METHODS[m] for m in methods})
    except (FileNotFoundError, ValueError, ConfigError, JournalMismatch) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    finished = journaled("humaneval", journal, problems, methods, concurrency,
                          lambda p, m: answer(p, m, cfg, params, budget_tokens))
    outcomes = finished.outcomes
    summary = summarize(outcomes, methods, score="pass_at_1")
    title = finished.titled(f"{data.name if data else 'HumanEval'}: {len(problems)} problems, model {solver}, "
                            f"budget {budget_tokens} tokens/problem")
    picture = plot(out_dir, summary, title, y="pass_at_1", ylabel="pass@1, hidden tests (%)",
                   filename=finished.file("accuracy.png"))
    saved = finished.save(out_dir, {"title": title, "problems": len(problems), "methods": methods,
                                    "budget_tokens": budget_tokens, "model": solver, "params": params,
                                    "summary": summary}, picture)
    _table(title, summary, [
        ("method", lambda r: r["method"]), ("pass@1", lambda r: f"{100 * r['pass_at_1']:.1f}%"),
        ("mean tokens", lambda r: f"{r['mean_tokens']:.0f}"), ("mean calls", lambda r: f"{r['mean_calls']:.2f}"),
        ("s/problem", lambda r: f"{r['mean_seconds']:.1f}"), ("errors", lambda r: str(r["errors"]))])
    out.print(saved, highlight=False)
    finished.exit_if_stopped()


@app.command("pool")
def pool_cmd(
    ctx: typer.Context,
    pool: Path = typer.Option(..., "--pool", help="A pool file of recorded outputs (data/pools/*.jsonl)."),
    graphs: str = typer.Option(POOL_GRAPHS, "--graphs",
                               help="Comma-separated graphs; GRAPH@MODEL has MODEL play every role."),
    config: Path | None = typer.Option(None, "--config",
                                       help="TOML config of pool models (default: built for the shared pools, "
                                            "written to the report); its pool_file is replaced by --pool."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="The first N questions."),
    answer_type: str | None = typer.Option(None, "--answer",
                                           help="Answer type: number, date, choice, text (default: from the "
                                                "pool's task or file name)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Runs at once."),
    param: list[str] = typer.Option([], "--param", "-p",
                                    help="KEY=VALUE for every graph that takes KEY; GRAPH.KEY=VALUE for one."),
    select_on: Path | None = typer.Option(None, "--select-on",
                                          help="A pool of other questions: each multi-source pool model's sources "
                                               "are ranked on it (strongest first: a vote's ties go there), and "
                                               "--pool is scored only."),
    budget_tokens: int | None = typer.Option(None, "--budget", min=1,
                                             help="Token budget per question (estimated tokens), binding as on a "
                                                  "live model: a completion is cut at what is left."),
    out_dir: Path = typer.Option(Path("bench-reports/pool"), "--out", help="Report folder."),
) -> None:
    """Accuracy, samples served, estimated tokens and cost per method on recorded outputs."""
    from refinegraph.bench.common import check_live_roles, plot, summarize, write_outcomes
    from refinegraph.bench.pool import (
        POOL_MAX_TOKENS,
        PRICES_NOTE,
        answer,
        answer_kind,
        check_answer_fits,
        check_pool_models,
        config_toml,
        default_config,
        default_params,
        load_pool,
        ordered_by,
        rank_sources,
        with_pool_file,
    )
    from refinegraph.bench.report import command_line
    from refinegraph.budget import Budget
    from refinegraph.config import ConfigError, load_config
    from refinegraph.models.pool import PoolError
    from refinegraph.tools.answers import get_projection
    from refinegraph.trace.store import TraceStore

    methods = _methods(graphs)
    skipped = _unknown(methods)
    for method in skipped:
        err.print(f"skipping {method}: no such graph registered (known graphs: {_known_graphs()})", markup=False)
    methods = [m for m in methods if m not in skipped]
    if not methods:
        err.print("error: no registered graph to run", markup=False)
        raise typer.Exit(2)
    try:
        questions, task = load_pool(pool, limit=limit)
        kind = answer_type or answer_kind(task, pool)
        get_projection(kind)
        check_answer_fits(questions, kind, task)
        if config is not None:  # the defaults' ACAR routing still applies where the config has its models
            cfg, defaults = with_pool_file(load_config(config), pool), {}
            if task in ("date", "gsm8k"):
                defaults = default_config(pool, task)[1]
        else:
            cfg, defaults = default_config(pool, task)
        check_pool_models(cfg)
        selection = None
        if select_on is not None:
            accuracy = rank_sources(select_on, kind, {q.question for q in load_pool(pool)[0]})
            cfg = ordered_by(cfg, accuracy)
            selection = {"selected_on": select_on.name,
                         "source_accuracy": {s: round(a, 4) for s, a in sorted(accuracy.items(), key=lambda x: -x[1])},
                         "orders": {n: m.pool_sources for n, m in cfg.models.items()
                                    if m.backend == "pool" and len(m.pool_sources or []) > 1}}
        optional = default_params(cfg, kind, defaults)
        optional = {g: {**p, "answer": kind, "max_tokens": POOL_MAX_TOKENS} for g, p in optional.items()}
        for method in methods:
            optional.setdefault(method.partition("@")[0], {"answer": kind, "max_tokens": POOL_MAX_TOKENS})
        params, applied = _resolve_all(methods, param, optional)
        configs = {m: _config_for(m, cfg) for m in methods}
        for method in methods:
            check_live_roles(method, params[method], configs[method])
    except (FileNotFoundError, KeyError, ValueError, ConfigError, PoolError) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc

    out_dir.mkdir(parents=True, exist_ok=True)
    store = TraceStore(out_dir / "traces.sqlite")
    try:
        outcomes = run_all("pool", [(q, m) for q in questions for m in methods], concurrency,
                            lambda q, m: answer(q, m, configs[m], params[m], kind, store,
                                                Budget(max_tokens=budget_tokens) if budget_tokens else None))
    finally:
        store.close()
    summary = summarize(outcomes, methods, means=("samples", "cost_usd"))
    write_outcomes(out_dir, outcomes)
    (out_dir / "config.toml").write_text(config_toml(cfg), encoding="utf-8")
    title = f"{pool.name}: {len(questions)} questions, answer type {kind}, default model {cfg.model_for_role('solver')}"
    picture = plot(out_dir, summary, title, x="mean_cost_usd", xlabel="mean cost per question (USD, illustrative)")
    report = {"title": title, "pool": str(pool), "questions": len(questions), "answer": kind, "methods": methods,
              "skipped": skipped, "config": str(config) if config else "default (config.toml)",
              "budget_tokens": budget_tokens, "selection": selection,
              "note": PRICES_NOTE, "params": applied, "summary": summary, "command": command_line(ctx)}
    (out_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _table(title, summary, [
        ("method", lambda r: r["method"]), ("accuracy", lambda r: f"{100 * r['accuracy']:.1f}%"),
        ("mean samples", lambda r: f"{r['mean_samples']:.2f}"), ("mean tokens*", lambda r: f"{r['mean_tokens']:.0f}"),
        ("mean cost $", lambda r: f"{r['mean_cost_usd']:.6f}"), ("mean calls", lambda r: f"{r['mean_calls']:.2f}"),
        ("errors", lambda r: str(r["errors"]))])
    out.print(f"* {PRICES_NOTE}", highlight=False)
    plot_note = picture or "(no plot: pip install matplotlib)"
    out.print(f"command: {report['command']}", highlight=False, markup=False)
    out.print(f"report: {out_dir}/summary.json {out_dir}/questions.jsonl {out_dir}/config.toml {plot_note}",
              highlight=False)
