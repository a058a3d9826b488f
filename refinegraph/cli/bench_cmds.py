"""`refinegraph bench ...`: commands that measure and print figures, and write a report.

The evaluation commands (spider, sampling here; gsm8k, pool, allocation beside) are the
package's own; the reliability and performance harnesses are forwarded to `benchmarks/` of a
checkout (refinegraph/cli/harness.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from refinegraph.cli import harness
from refinegraph.cli.common import err, out

app = typer.Typer(no_args_is_help=True, add_completion=False)  # its help: refinegraph.cli.app.GROUPS
harness.register(app)  # reliability, overhead, throughput, vllm, batch: benchmarks/ of a checkout


@app.command("sampling")
def sampling_cmd(
    n: int = typer.Option(8, "--n", min=1, help="Samples per configuration."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="max_tokens of each sample."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Interleaved repeats."),
    fresh_prompt: bool = typer.Option(
        True, "--fresh-prompt/--same-prompt",
        help="Prefix each request set with a unique tag so no configuration reuses another's "
             "cached prompt (--same-prompt shows the server's prompt cache at work)."),
    out_dir: Path = typer.Option(Path("bench-reports/sampling"), "--out", help="Folder for report.json/.md."),
    model: list[str] = typer.Option([], "--model", help="Packaged model (repeat it to compare models side by "
                                                        "side, each in its own process). Default: the default."),
) -> None:
    """The embedded llama.cpp server: n samples in one request vs n requests vs refinegraph,
    with prefill/decode tokens/s and the peak resident memory beside the model file's size."""
    import asyncio

    from refinegraph.bench.sampling import compare, compare_markdown, compare_rows, markdown, ratio_lines, sampling
    from refinegraph.models import ModelUnavailable

    if len(model) > 1:
        err.print(f"n={n}, max_tokens={max_tokens}, {repeats} repeats on {', '.join(model)}, one process each ...")
        report = compare(model, n, max_tokens, repeats, fresh_prompt)
        table = Table(title=f"n={n} samples, max_tokens={max_tokens}, median of {repeats} repeats")
        from refinegraph.bench.sampling import COMPARE_HEADER
        for name in COMPARE_HEADER:
            table.add_column(name, justify="left" if name == "model" else "right")
        for row in compare_rows(report):
            table.add_row(*row)
        finish_report(table, [], out_dir, report, compare_markdown(report))
        return
    err.print(f"n={n}, max_tokens={max_tokens}, {repeats} repeats against the embedded llama.cpp server ...")
    try:
        report = asyncio.run(sampling(n=n, max_tokens=max_tokens, repeats=repeats, fresh_prompt=fresh_prompt,
                                      model=model[0] if model else None))
    except ModelUnavailable as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    table = Table(title=f"n={n} samples, max_tokens={max_tokens}, temperature {report['temperature']}, "
                        f"prompt {report['prompt_tokens']} tokens, median of {repeats} repeats")
    for name in ("configuration", "wall s", "completion tok", "completion tok/s", "prompt tok processed",
                 "prompt tok cached", "requests", "distinct texts"):
        table.add_column(name, justify="left" if name == "configuration" else "right")
    for c in report["configurations"]:
        table.add_row(c["label"], f"{c['wall_s']:.2f}", f"{c['completion_tokens']:.0f}",
                      f"{c['completion_tokens_per_s']:.1f}", f"{c['prompt_tokens_processed']:.0f}",
                      f"{c['prompt_tokens_cached']:.0f}", f"{c['http_requests']}",
                      f"{c['distinct_texts']:.0f}/{n}")
    speed, memory = report["speed"], report["memory"]
    lines = [*ratio_lines(report),
             f"{report['model']['title']}: prefill {speed['prefill_tok_s']:.1f} tok/s, decode "
             f"{speed['decode_tok_s']:.1f} tok/s; peak RSS {memory['peak_rss_mb']:.0f} MB, "
             f"{memory['beyond_file_mb']:.0f} MB beyond the {memory['file_mb']:.0f} MB model file"]
    finish_report(table, lines, out_dir, report, markdown(report))


def finish_report(table: Table, lines: list[str], out_dir: Path, report: dict, markdown: str) -> None:
    """Print the table and the figures' lines, then write report.json and report.md."""
    from refinegraph.bench.report import write_report

    out.print(table)
    for line in lines:
        out.print(line, highlight=False)
    json_path, md_path = write_report(out_dir, report, markdown)
    out.print(f"report: {json_path}  {md_path}", highlight=False)


@app.command("spider")
def spider_cmd(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Spider or BIRD folder (dev.json + database/)."),
    graphs: str = typer.Option("sql-greedy,sql-sc,csc-sql", "--graphs", help="Comma-separated SQL graphs."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="The first N questions."),
    sample: int | None = typer.Option(None, "--sample", min=1,
                                      help="N questions drawn with --seed, every database represented."),
    seed: int = typer.Option(0, "--seed", help="The seed of --sample."),
    model: str | None = typer.Option(None, "--model", help="Configured model for every role."),
    config: Path | None = typer.Option(None, "--config", help="TOML config."),
    budget_tokens: int | None = typer.Option(6000, "--budget-tokens", min=1,
                                             help="Token budget per question, the same for every method."),
    param: list[str] = typer.Option([], "--param", "-p", help="Graph parameter KEY=VALUE for every graph."),
    metric: str | None = typer.Option(None, "--metric",
                                      help="spider (bag of rows, columns in any order, as Spider's evaluator) or "
                                           "bird (set of rows, as BIRD's); default: the data's own. Both are "
                                           "reported."),
    pool: Path | None = typer.Option(None, "--pool", help="Recorded candidates (pool file) instead of a model."),
    systems: str | None = typer.Option(None, "--systems", help="With --pool: systems to vote over, in order."),
    top: int | None = typer.Option(None, "--top", min=1,
                                   help="With --pool: the K systems most accurate on --select-on's questions "
                                        "(without --select-on: on these very questions, an oracle choice)."),
    select_on: Path | None = typer.Option(None, "--select-on",
                                          help="With --pool: a Spider/BIRD folder whose questions rank the "
                                               "systems and weigh the weighted vote; --data is then scored "
                                               "only (no peeking)."),
    concurrency: int = typer.Option(1, "--concurrency", min=1,
                                    help="Runs at once (the embedded server batches up to its 8 slots)."),
    out_dir: Path = typer.Option(Path("bench-reports/spider"), "--out", help="Report folder."),
) -> None:
    """Execution accuracy of the SQL graphs, per method at equal token budget, with a plot."""

    from refinegraph.bench.common import check_live_roles
    from refinegraph.bench.pool import POOL_MAX_TOKENS
    from refinegraph.bench.report import command_line
    from refinegraph.bench.spider import answer, load_questions, plot, sample_questions, summarize
    from refinegraph.bench.spider_metric import GoldFailed, check_golds, check_metric, layout_metric
    from refinegraph.cli.running import parse_params as _params
    from refinegraph.config import ConfigError, ModelSpec, load_config

    command = command_line(ctx)
    selection: dict | None = None
    try:
        chosen_metric = check_metric(metric) if metric else layout_metric(data)
        if sample is not None and limit is not None:
            raise ValueError("give --limit or --sample, not both")
        questions = load_questions(data, limit=limit)
        if sample is not None:
            questions = sample_questions(questions, sample, seed)
        check_golds(questions, chosen_metric)
        cfg = load_config(config)
        if model:
            cfg = cfg.with_model(model)
        params = _params(param)
        methods = [g.strip() for g in graphs.split(",") if g.strip()]
        if select_on is not None and pool is None:
            raise ValueError("--select-on chooses recorded systems: give --pool too")
        if pool is not None:
            selection = _pool_selection(pool, data, {q.question for q in questions}, systems, top, select_on,
                                        chosen_metric)
            chosen = selection["systems"]
            merger = model or cfg.model_for_role("merger")
            if "csc-sql" in methods:
                spec = cfg.spec(merger)
                err.print(f"note: csc-sql's merger is a live model: {merger!r} (backend {spec.backend}); "
                          f"the other roles read the pool", markup=False)
            cfg = cfg.model_copy(update={
                "models": {**cfg.models, "pool": ModelSpec(backend="pool", pool_file=str(pool), pool_sources=chosen)},
                "roles": {"default": "pool", "merger": merger}})
            # Above every recorded query: only the budget cuts one, as it would a live model's.
            params = {"max_tokens": POOL_MAX_TOKENS, **params, "n": len(chosen)}
            for method in methods:
                check_live_roles(method, params, cfg)
            if "sql-greedy" in methods:
                err.print(f"note: with --pool, sql-greedy answers with the first system's SQL ({chosen[0]})",
                          markup=False)
    except (FileNotFoundError, ValueError, ConfigError, GoldFailed) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc

    from refinegraph.bench.journal import Journal, JournalMismatch, model_identity
    from refinegraph.bench.spider import Outcome

    solver = cfg.model_for_role("solver")
    try:
        journal = Journal(out_dir, {"benchmark": "spider", "data": data.resolve().name,
                                    "questions": [q.index for q in questions] if sample else len(questions),
                                    "budget_tokens": budget_tokens, "params": params,
                                    "model": solver, "model_spec": model_identity(cfg.models[solver]),
                                    "pool": pool.name if pool else None, "metric": chosen_metric}, Outcome)
    except JournalMismatch as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    from refinegraph.cli.bench_runs import journaled

    finished = journaled("spider", journal, questions, methods, concurrency,
                         lambda q, m: answer(q, m, cfg, params, budget_tokens, chosen_metric))
    outcomes = finished.outcomes
    summary = summarize(outcomes, methods)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = f"pool {pool.name} ({params['n']} systems)" if pool else f"model {cfg.model_for_role('solver')}"
    title = finished.titled(f"{data.name}: {len(questions)} questions, {source}, budget {budget_tokens} "
                            f"tokens/question, {chosen_metric} metric")
    picture = plot(out_dir, summary, title, ylabel=f"execution accuracy, {chosen_metric} metric (%)",
                   filename=finished.file("accuracy.png"))
    report = {"title": title, "command": command, "metric": chosen_metric, "questions": len(questions),
              "methods": methods, "params": params, "budget_tokens": budget_tokens, "summary": summary}
    if selection is not None:
        report["systems"] = cfg.models["pool"].pool_sources
        report["selection"] = selection
    saved = finished.save(out_dir, report, picture)
    table = Table(title=title)
    for name in ("method", "EX", "EX spider", "EX bird", "mean tokens", "mean calls", "s/question",
                 "EX per 1k tokens", "errors"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for row in summary:
        table.add_row(row["method"], f"{100 * row['ex']:.1f}%", f"{100 * row['ex_spider']:.1f}%",
                      f"{100 * row['ex_bird']:.1f}%", f"{row['mean_tokens']:.0f}",
                      f"{row['mean_calls']:.2f}", f"{row['mean_seconds']:.1f}",
                      f"{row['ex_per_1k_tokens']:.3f}" if row["ex_per_1k_tokens"] is not None else "-",
                      str(row["errors"]))
    out.print(table)
    for row in summary:
        if row.get("failed_first"):
            repairs = (f"; repairs made {row['repaired']} of them executable"
                       if row["method"] == "sql-repair" or params.get("repair") else "")
            out.print(f"{row['method']}: {row['failed_first']} of {row['candidates']} candidates failed to execute "
                      f"at first{repairs}", highlight=False)
    if selection is not None and selection.get("offline"):
        offline = selection["offline"]
        out.print(f"recorded systems on these questions ({chosen_metric} metric): best single "
                  f"{offline['best_single']['system']} {100 * offline['best_single']['ex']:.1f}%, vote "
                  f"{100 * offline['vote']:.1f}%, weighted vote {100 * offline['weighted_vote']:.1f}% "
                  f"(chosen on {selection['selected_on']})", highlight=False)
    out.print(f"command: {command}", highlight=False, markup=False)
    out.print(saved, highlight=False)
    finished.exit_if_stopped()


def _pool_selection(pool: Path, data: Path, questions: set[str], systems: str | None, top: int | None,
                    select_on: Path | None, metric: str) -> dict:
    """Which systems vote, chosen on `select_on`'s questions when given (else on the scored
    ones, an oracle choice), with weights from the same questions and the recorded systems'
    own figures on the scored questions: best single (as chosen), plain and weighted vote."""
    from refinegraph.bench.spider import load_questions
    from refinegraph.bench.spider_pool import (
        log_odds_weights,
        pool_sources,
        score_pool,
        system_accuracy,
        vote_accuracy,
    )

    available = pool_sources(pool)
    if systems:
        named = [s.strip() for s in systems.split(",") if s.strip()]
        unknown = [s for s in named if s not in available]
        if unknown:
            raise ValueError(f"--systems: {', '.join(unknown)} not in {pool.name}; available: "
                             f"{', '.join(sorted(available))}")
    elif not top:
        raise ValueError("with --pool, name --systems or give --top K")
    if select_on is not None:
        picked = {q.question for q in load_questions(select_on)}
        overlap = picked & questions
        if overlap:
            raise ValueError(f"--select-on shares {len(overlap)} questions with --data: selection would peek")
        chooser = score_pool(pool, select_on / "database", questions=picked, metric=metric)  # type: ignore[arg-type]
        if not chooser:
            raise ValueError(f"no question of {select_on} is in {pool.name}")
    else:
        chooser = score_pool(pool, data / "database", questions=questions, metric=metric)  # type: ignore[arg-type]
    accuracy = system_accuracy(chooser)
    ranked = sorted(accuracy, key=lambda s: (-accuracy[s], s))
    chosen = named if systems else ranked[:top]
    weights = log_odds_weights(accuracy, len(chooser))
    scored = score_pool(pool, data / "database", questions=questions, metric=metric)  # type: ignore[arg-type]
    report_accuracy = system_accuracy(scored) if scored else {}
    best = chosen[0]
    return {
        "systems": chosen, "selected_on": str(select_on.name) if select_on else "the scored questions (oracle)",
        "selection_questions": len(chooser),
        "selection_accuracy": {s: round(accuracy.get(s, 0.0), 4) for s in chosen},
        "weights": {s: round(weights.get(s, 0.0), 4) for s in chosen},
        "offline": {
            "best_single": {"system": best, "ex": round(report_accuracy.get(best, 0.0), 4)},
            "vote": round(vote_accuracy(scored, chosen), 4) if scored else None,
            "weighted_vote": round(vote_accuracy(scored, chosen, weights), 4) if scored else None,
        } if scored else None,
    }
