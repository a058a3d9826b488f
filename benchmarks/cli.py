"""`python -m benchmarks ...`: the reliability and performance harnesses, with the options
`refinegraph bench reliability|overhead|throughput|vllm|batch` forwards to them.

Each command prints its figures side by side and writes report.json and report.md into
`--out`. Heavy imports happen inside the commands, so `--help` stays quick.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from rich.table import Table

from refinegraph.cli.bench_cmds import finish_report
from refinegraph.cli.common import err, fail, out

app = typer.Typer(help="refinegraph's reliability and performance harnesses (run from a checkout).",
                  no_args_is_help=True, pretty_exceptions_enable=False)


def key_values(pairs: list[str]) -> dict:
    """KEY=VALUE pairs as a dict, each value JSON when it parses (else the string)."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"takes KEY=VALUE, got {pair!r}")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


@app.command("overhead")
def overhead_cmd(
    runs: int = typer.Option(300, "--runs", min=5, help="Runs per configuration (split over the rounds)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Interleaved rounds."),
    out_dir: Path = typer.Option(Path("bench-reports/overhead"), "--out", help="Folder for report.json/.md."),
) -> None:
    """Self-Refine on an instant model: bare LangGraph vs refinegraph, tracing off and on."""
    from benchmarks.overhead import goal_lines, markdown, overhead

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
    finish_report(table, goal_lines(report), out_dir, report, markdown(report))


@app.command("throughput")
def throughput_cmd(
    runs: int = typer.Option(320, "--runs", min=32, help="Runs per configuration and round."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Interleaved rounds."),
    concurrency: int = typer.Option(32, "--concurrency", min=1, help="Runs at once."),
    postgres: str | None = typer.Option(None, "--postgres", envvar="REFINEGRAPH_PG_DSN",
                                        help="Also measure a PostgreSQL store at this DSN (a schema of its own)."),
    out_dir: Path = typer.Option(Path("bench-reports/throughput"), "--out", help="Folder for report.json/.md."),
) -> None:
    """Runs per second at 32 concurrent runs of an instant model: bare LangGraph, no trace,
    the default path on SQLite (and PostgreSQL)."""
    from benchmarks.throughput import goal_lines, markdown, throughput

    err.print(f"measuring {runs} runs per configuration and round, {concurrency} at a time, {rounds} rounds ...")
    report = asyncio.run(throughput(runs, rounds, concurrency, postgres))
    table = Table(title=f"{concurrency} concurrent runs on an instant model")
    for column in ("graph", "configuration", "runs/s", "vs no trace"):
        table.add_column(column, justify="right" if column in ("runs/s", "vs no trace") else "left")
    for graph, rows in report["graphs"].items():
        for name, row in rows.items():
            table.add_row(graph, name, f"{row['runs_per_s']:.1f}", f"{row['vs_no_trace']:.2f}x")
    finish_report(table, goal_lines(report), out_dir, report, markdown(report))


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

    from benchmarks.vllm import HEADER, markdown, rows, vllm_bench
    from refinegraph.models.vllm_server import server_flags

    # vLLM's CPU build otherwise reserves 92% of memory (and refuses to start when that is not
    # free); a GPU build ignores this variable.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine_args = key_values(engine_arg)
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
    finish_report(table, [], out_dir, report, markdown(report))


@app.command("reliability")
def reliability_cmd(
    parts: str | None = typer.Option(None, "--parts", help="Comma-separated parts (default: all): faults, crash, "
                                     "concurrent-writers, torture, tamper, sql, sandbox, server-fuzz, server-load."),
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
    from benchmarks.reliability import HEADER, markdown, reliability, section_rows

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
    finish_report(table, problems, out_dir, report, markdown(report))
    out.print(report["summary"], highlight=False)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("proxy")
def proxy_cmd(
    requests: int = typer.Option(400, "--requests", min=8, help="Requests per configuration (over the rounds)."),
    rounds: int = typer.Option(4, "--rounds", min=1, help="Interleaved rounds."),
    concurrency: str = typer.Option("1,16", "--concurrency", help="Comma-separated concurrencies."),
    upstream: str = typer.Option("embedded", "--upstream",
                                 help="embedded (the llama.cpp server with --model) or stub (an instant scripted "
                                      "reply: the proxy's own cost alone)."),
    model: str = typer.Option("smollm2-135m", "--model", help="Packaged model of the embedded upstream."),
    out_dir: Path = typer.Option(Path("bench-reports/proxy"), "--out", help="Folder for report.json/.md."),
) -> None:
    """greedy:UPSTREAM through `refinegraph serve` vs the request sent straight to the upstream
    (the embedded server, or a scripted stub): added latency at p50/p99 and the throughput ratio."""
    from benchmarks.proxy import goal_lines, markdown, measure

    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        err.print("--concurrency takes positive integers, e.g. 1,16")
        raise typer.Exit(2)
    if upstream not in ("embedded", "stub"):
        err.print(f"--upstream is embedded or stub, not {upstream!r}")
        raise typer.Exit(2)
    err.print(f"measuring {requests} requests per configuration at concurrency {levels}, {rounds} rounds ...")
    report = asyncio.run(measure(requests, rounds, levels, upstream=upstream, model=model))
    table = Table(title=f"greedy:UPSTREAM through refinegraph serve vs direct ({report['upstream']})")
    for column in ("concurrency", "direct p50 ms", "proxied p50 ms", "added p50", "added p99", "req/s ratio"):
        table.add_column(column, justify="right")
    for r in report["rows"]:
        table.add_row(str(r["concurrency"]), f"{r['direct']['p50_ms']:.2f}", f"{r['proxied']['p50_ms']:.2f}",
                      f"{r['added_p50_ms']:.2f}", f"{r['added_p99_ms']:.2f}", f"{r['throughput_ratio']:.2f}x")
    finish_report(table, goal_lines(report), out_dir, report, markdown(report))


@app.command("batch")
def batch_cmd(
    runs: int = typer.Option(32, "--runs", min=1, help="Runs (inputs) per configuration and round."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Runs / requests at once."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=8, help="max_tokens of each run's one call."),
    rounds: int = typer.Option(2, "--rounds", min=1, help="Interleaved rounds (each on fresh prompts)."),
    out_dir: Path = typer.Option(Path("bench-reports/batch"), "--out", help="Folder for report.json/.md."),
) -> None:
    """`refinegraph batch` (local executor, greedy) vs a raw asyncio openai load of the same
    requests at the same concurrency, on the embedded llama.cpp server: completion tok/s."""
    from benchmarks.batch import batch_bench, markdown
    from refinegraph.bench.report import write_report
    from refinegraph.models import ModelUnavailable

    err.print(f"{runs} runs x {rounds} rounds per configuration, concurrency {concurrency}, "
              f"max_tokens {max_tokens}, embedded llama.cpp server ...")
    try:
        report = asyncio.run(batch_bench(runs=runs, concurrency=concurrency, max_tokens=max_tokens, rounds=rounds))
    except ModelUnavailable as exc:
        fail(str(exc), 1)
    text = markdown(report)  # its last line is the ratio against the goal
    out.print(text, highlight=False, markup=False)
    json_path, md_path = write_report(out_dir, report, text)
    out.print(f"report: {json_path}  {md_path}", highlight=False)


def main() -> None:
    app(prog_name="python -m benchmarks")
