"""`refinegraph bench ...`: commands that measure and print figures, and write a report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.table import Table

from refinegraph.cli.common import err, out

app = typer.Typer(help="Benchmarks: print figures side by side and write a report.", no_args_is_help=True)


@app.command("overhead")
def overhead_cmd(
    runs: int = typer.Option(300, "--runs", min=5, help="Runs per configuration (split over the rounds)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Interleaved rounds."),
    out_dir: Path = typer.Option(Path("bench-reports/overhead"), "--out", help="Folder for report.json/.md."),
) -> None:
    """Self-Refine on an instant model: bare LangGraph vs refinegraph, tracing off and on."""
    from refinegraph.bench.overhead import goal_lines, markdown, overhead

    err.print(f"measuring {runs} runs per configuration in {rounds} interleaved rounds ...")
    report = asyncio.run(overhead(runs, rounds))
    table = Table(title=f"Self-Refine on an instant model: {report['model_calls_per_run']} calls a run, "
                        f"{report['runs_per_configuration']} runs each")
    table.add_column("configuration")
    table.add_column("median ms/run", justify="right")
    table.add_column("rounds (ms)", justify="right")
    table.add_column("vs bare", justify="right")
    for c in report["configurations"]:
        table.add_row(c["label"] + (" [dim](informative)[/]" if c["informative"] else ""),
                      f"{c['median_ms']:.3f}",
                      f"{min(c['round_medians_ms']):.2f}-{max(c['round_medians_ms']):.2f}",
                      f"{c['ratio_vs_bare']:.2f}x")
    _finish(table, goal_lines(report), out_dir, report, markdown(report))


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
        _finish(table, [], out_dir, report, compare_markdown(report))
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
    _finish(table, lines, out_dir, report, markdown(report))


@app.command("vllm")
def vllm_cmd(
    model_dir: str = typer.Option(..., "--model-dir", help="A Hugging Face model folder or id vLLM can load "
                                                           "(scripts/vllm-cpu-env.sh converts the embedded model)."),
    n: int = typer.Option(8, "--n", min=1, help="Samples in one request."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="max_tokens of each sample."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Repeats per backend."),
    backends: str = typer.Option("local,vllm,vllm-server", "--backends",
                                 help="Comma-separated: local (llama.cpp), vllm (engine), vllm-server."),
    engine_arg: list[str] = typer.Option(["max_model_len=2048", "enforce_eager=true"], "--engine-arg",
                                         help="vLLM engine argument KEY=VALUE (also passed to the server)."),
    out_dir: Path = typer.Option(Path("bench-reports/vllm"), "--out", help="Folder for report.json/.md."),
) -> None:
    """vLLM's engine in-process and vLLM's server (load time, tokens/s, memory), llama.cpp beside."""
    import os

    from refinegraph.bench.vllm import HEADER, markdown, rows, vllm_bench
    from refinegraph.cli.app import _params
    from refinegraph.models.vllm_server import server_flags

    # vLLM's CPU build otherwise reserves 92% of memory (and refuses to start when that is not
    # free); a GPU build ignores this variable.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine_args = _params(engine_arg)
    if "model" in engine_args:  # the model folder is the argument; a second one would go unreported
        err.print("[bold red]error:[/] --engine-arg model=... is not allowed: the model is --model-dir",
                  highlight=False)
        raise typer.Exit(2)
    server_args = tuple(server_flags(engine_args))
    chosen = tuple(b.strip() for b in backends.split(",") if b.strip())
    err.print(f"n={n}, max_tokens={max_tokens}, {repeats} repeats on {', '.join(chosen)} ...")
    report = asyncio.run(vllm_bench(model_dir, out_dir, n=n, max_tokens=max_tokens, repeats=repeats,
                                    engine_args=engine_args, server_args=server_args, backends=chosen))
    table = Table(title=f"{model_dir}: n={n} in one request, max_tokens={max_tokens}, median of {repeats}")
    for name in HEADER:
        table.add_column(name, justify="left" if name == "backend" else "right")
    for row in rows(report):
        table.add_row(*[str(c) for c in row])
    _finish(table, [], out_dir, report, markdown(report))


@app.command("reliability")
def reliability_cmd(
    parts: str | None = typer.Option(None, "--parts", help="Comma-separated parts (default: all): faults, crash, "
                                     "concurrent-writers, truncation, tamper, sql, sandbox, server-fuzz, server-load."),
    runs: int = typer.Option(200, "--runs", min=1, help="Graph runs through the fault-injecting proxy."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Runs at once through the proxy."),
    batch_runs: int = typer.Option(50, "--batch-runs", min=2, help="Runs of the batch that is killed and resumed."),
    clients: int = typer.Option(16, "--clients", min=1, help="Concurrent clients of the server under load."),
    seconds: float = typer.Option(120.0, "--seconds", min=1, help="How long the server is loaded."),
    spider: Path | None = typer.Option(None, "--spider", help="A Spider folder for the SQL part (else a small "
                                                               "database of its own)."),
    pg_dsn: str | None = typer.Option(None, "--pg-dsn", envvar="REFINEGRAPH_PG_DSN",
                                      help="PostgreSQL for the SQL part ($REFINEGRAPH_PG_DSN; none: skipped)."),
    out_dir: Path = typer.Option(Path("bench-reports/reliability"), "--out", help="Folder for report.json/.md."),
) -> None:
    """Faults, crashes and hostile input: every run answered or a typed error, traces verified, nothing lost."""
    from refinegraph.bench.reliability import HEADER, markdown, reliability, section_rows

    chosen = [p.strip() for p in parts.split(",") if p.strip()] if parts else None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = asyncio.run(reliability(out_dir / "work", chosen, runs=runs, concurrency=concurrency,
                                         batch_runs=batch_runs, clients=clients, seconds=seconds,
                                         spider_dir=spider, pg_dsn=pg_dsn))
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    table = Table(title="reliability")
    for name in HEADER:
        table.add_column(name, justify="left" if name in ("part", "result") else "right")
    for row in section_rows(report):
        table.add_row(*[str(c) for c in row])
    problems = [f"{s['name']}: {p}" for s in report["sections"] for p in s["problems"]]
    _finish(table, problems, out_dir, report, markdown(report))
    out.print(report["summary"], highlight=False)
    if not report["ok"]:
        raise typer.Exit(1)


def _finish(table: Table, lines: list[str], out_dir: Path, report: dict, markdown: str) -> None:
    """Print the table and the figures' lines, then write report.json and report.md."""
    from refinegraph.bench.report import write_report

    out.print(table)
    for line in lines:
        out.print(line, highlight=False)
    json_path, md_path = write_report(out_dir, report, markdown)
    out.print(f"report: {json_path}  {md_path}", highlight=False)


@app.command("spider")
def spider_cmd(
    data: Path = typer.Option(..., "--data", help="Spider or BIRD folder (dev.json + database/)."),
    graphs: str = typer.Option("sql-greedy,sql-sc,csc-sql", "--graphs", help="Comma-separated SQL graphs."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="The first N questions."),
    model: str | None = typer.Option(None, "--model", help="Configured model for every role."),
    config: Path | None = typer.Option(None, "--config", help="TOML config."),
    budget_tokens: int | None = typer.Option(6000, "--budget-tokens", min=1,
                                             help="Token budget per question, the same for every method."),
    param: list[str] = typer.Option([], "--param", "-p", help="Graph parameter KEY=VALUE for every graph."),
    pool: Path | None = typer.Option(None, "--pool", help="Recorded candidates (pool file) instead of a model."),
    systems: str | None = typer.Option(None, "--systems", help="With --pool: systems to vote over, in order."),
    top: int | None = typer.Option(None, "--top", min=1,
                                   help="With --pool: the K systems most accurate on these questions (an oracle "
                                        "choice, as in the published counts)."),
    concurrency: int = typer.Option(1, "--concurrency", min=1,
                                    help="Runs at once (the embedded server batches up to its 8 slots)."),
    out_dir: Path = typer.Option(Path("bench-reports/spider"), "--out", help="Report folder."),
) -> None:
    """Execution accuracy of the SQL graphs, per method at equal token budget, with a plot."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from refinegraph.bench.spider import answer, load_questions, plot, summarize, write_outcomes
    from refinegraph.cli.app import _params
    from refinegraph.config import ConfigError, ModelSpec, load_config

    try:
        questions = load_questions(data, limit=limit)
        cfg = load_config(config)
        if model:
            cfg = cfg.with_model(model)
        params = _params(param)
        methods = [g.strip() for g in graphs.split(",") if g.strip()]
        if pool is not None:
            chosen = _pool_systems(pool, data, systems, top, {q.question for q in questions})
            merger = model or cfg.model_for_role("merger")
            cfg = cfg.model_copy(update={
                "models": {**cfg.models, "pool": ModelSpec(backend="pool", pool_file=str(pool), pool_sources=chosen)},
                "roles": {"default": "pool", "merger": merger}})
            params = {**params, "n": len(chosen)}
            methods = [m for m in methods if m != "sql-greedy"] or ["sql-sc"]
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc

    from refinegraph.bench.journal import Journal, JournalMismatch
    from refinegraph.bench.spider import Outcome

    solver = cfg.model_for_role("solver")
    try:
        journal = Journal(out_dir, {"benchmark": "spider", "data": str(data.resolve()), "questions": len(questions),
                                    "methods": methods, "budget_tokens": budget_tokens, "params": params,
                                    "model": solver, "model_spec": cfg.models[solver].model_dump(),
                                    "pool": str(pool) if pool else None}, Outcome)
    except JournalMismatch as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    jobs = journal.pending([(q, m) for q in questions for m in methods])
    if len(jobs) < len(questions) * len(methods):
        err.print(f"resuming {out_dir}: {len(questions) * len(methods) - len(jobs)} done, {len(jobs)} to go",
                  highlight=False)

    async def main() -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(question, method):
            async with gate:
                outcome = await answer(question, method, cfg, params, budget_tokens)
            journal.record(outcome)
            progress.advance(task)

        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err) as progress:
            task = progress.add_task("spider", total=len(jobs))
            await asyncio.gather(*[one(q, m) for q, m in jobs])

    asyncio.run(main())
    outcomes = journal.outcomes(methods)
    summary = summarize(outcomes, methods)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_outcomes(out_dir, outcomes)
    source = f"pool {pool.name} ({params['n']} systems)" if pool else f"model {cfg.model_for_role('solver')}"
    title = f"{data.name}: {len(questions)} questions, {source}, budget {budget_tokens} tokens/question"
    picture = plot(out_dir, summary, title)
    report = {"title": title, "questions": len(questions), "methods": methods, "params": params,
              "budget_tokens": budget_tokens, "summary": summary}
    if pool is not None:
        report["systems"] = cfg.models["pool"].pool_sources
    (out_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = Table(title=title)
    for name in ("method", "EX", "mean tokens", "mean calls", "s/question", "EX per 1k tokens", "errors"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for row in summary:
        table.add_row(row["method"], f"{100 * row['ex']:.1f}%", f"{row['mean_tokens']:.0f}",
                      f"{row['mean_calls']:.2f}", f"{row['mean_seconds']:.1f}",
                      f"{row['ex_per_1k_tokens']:.3f}" if row["ex_per_1k_tokens"] is not None else "-",
                      str(row["errors"]))
    out.print(table)
    plot_note = picture or "(no plot: pip install matplotlib)"
    out.print(f"report: {out_dir}/summary.json {out_dir}/questions.jsonl {plot_note}", highlight=False)


def _pool_systems(pool: Path, data: Path, systems: str | None, top: int | None, questions: set[str]) -> list[str]:
    """The systems to vote over: named ones, or the `top` most accurate on these questions."""
    from refinegraph.bench.spider_pool import score_pool, system_accuracy

    if systems:
        return [s.strip() for s in systems.split(",") if s.strip()]
    if not top:
        raise ValueError("with --pool, name --systems or give --top K")
    accuracy = system_accuracy(score_pool(pool, data / "database", questions=questions))
    return sorted(accuracy, key=lambda s: (-accuracy[s], s))[:top]
