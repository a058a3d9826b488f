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
) -> None:
    """The embedded llama.cpp server: n samples in one request vs n requests vs refinegraph."""
    from refinegraph.bench.sampling import markdown, ratio_lines, sampling
    from refinegraph.models import ModelUnavailable

    err.print(f"n={n}, max_tokens={max_tokens}, {repeats} repeats against the embedded llama.cpp server ...")
    try:
        report = asyncio.run(sampling(n=n, max_tokens=max_tokens, repeats=repeats, fresh_prompt=fresh_prompt))
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
    _finish(table, ratio_lines(report), out_dir, report, markdown(report))


def _finish(table: Table, lines: list[str], out_dir: Path, report: dict, markdown: str) -> None:
    """Print the table and the figures' lines, then write report.json and report.md."""
    from refinegraph.bench.report import write_report

    out.print(table)
    for line in lines:
        out.print(line, highlight=False)
    json_path, md_path = write_report(out_dir, report, markdown)
    out.print(f"report: {json_path}  {md_path}", highlight=False)
