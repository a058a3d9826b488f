"""`refinegraph bench allocation`: record a pool (optional), then replay it offline to compare
SC@all, per-question adaptive SC and dataset-level sample allocation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from refinegraph.cli.bench_cmds import app
from refinegraph.cli.common import err, fail


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--ratios takes numbers separated by commas, not {text!r}")
    if not values or any(v <= 0 for v in values):
        fail("--ratios needs at least one positive number")
    return values


@app.command("allocation")
def allocation_cmd(
    pool: Path | None = typer.Option(None, "--pool", help="An existing pool file (shared pools format)."),
    source: str | None = typer.Option(None, "--source", help="With --pool: the recorded source to replay "
                                                               "(default: the one with the most samples)."),
    record_n: int | None = typer.Option(None, "--record", min=1, help="Record the first N GSM8K test questions."),
    samples: int = typer.Option(32, "--samples", min=1, max=256, help="With --record: samples per question."),
    model: str = typer.Option("local", "--model", help="With --record: the configured model (every role)."),
    config: Path | None = typer.Option(None, "--config", help="TOML config."),
    max_tokens: int = typer.Option(160, "--max-tokens", min=8, help="With --record: max_tokens of each sample."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, max=2.0, help="With --record."),
    seed: int = typer.Option(0, "--seed", help="With --record: the runs' seed."),
    timeout: float = typer.Option(1800.0, "--timeout", min=1.0,
                                  help="With --record: seconds one request may take (n samples in one request "
                                       "on a busy CPU take minutes; a timed-out request is retried from scratch)."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="With --record on the embedded model: its CPU threads (1 holds up "
                                            "best on a CPU other processes also use; default: the config's)."),
    param: list[str] = typer.Option([], "--param", "-p", help="With --record: graph parameter KEY=VALUE."),
    answer: str | None = typer.Option(None, "--answer", help="Answer type: number, date, choice, text "
                                                               "(default: from the file name)."),
    ratios: str = typer.Option("4,7,10,15,20", "--ratios", help="Allocation totals: SC@all's total divided by these."),
    threshold: float = typer.Option(0.95, "--threshold", min=0.51, max=0.999, help="Beta posterior threshold."),
    initial: int = typer.Option(2, "--initial", min=0, help="Allocation: samples every question gets first."),
    batch: int = typer.Option(1, "--batch", min=1, help="Allocation: samples per step."),
    out_dir: Path = typer.Option(Path("bench-reports/allocation"), "--out", help="Folder for the pool and report."),
) -> None:
    """Samples used vs agreement with SC@all: adaptive SC and dataset-level allocation."""
    import asyncio

    from refinegraph.bench.allocation import (
        HEADER,
        bench,
        goal_lines,
        guess_kind,
        load_gsm8k,
        markdown,
        pool_sources,
        record,
        table_rows,
        title,
    )
    from refinegraph.cli.bench_cmds import finish_report
    from refinegraph.cli.running import parse_params as _params
    from refinegraph.config import ConfigError, load_config
    from refinegraph.models import ModelUnavailable
    from refinegraph.tools.answers import validate_kind

    if (pool is None) == (record_n is None):
        fail("give either --pool FILE (replay it) or --record N (record N GSM8K questions, then replay)")
    cut = _ratios(ratios)
    recorded = None
    try:
        if answer is not None:
            validate_kind(answer)
        if record_n is not None:
            cfg = load_config(config).with_model(model)
            changes = {"timeout_s": timeout, **({"threads": threads} if threads else {})}
            spec = cfg.spec(model).model_copy(update=changes)
            cfg = cfg.model_copy(update={"models": {**cfg.models, model: spec}})
            params = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed, "answer": answer or "number",
                      **_params(param)}
            questions = load_gsm8k(record_n)
            pool = out_dir / f"gsm8k_{model}_sc{samples}.jsonl"
            err.print(f"recording {len(questions)} GSM8K questions x {samples} samples on {model} "
                      f"({params}) into {pool} ...", highlight=False)

            def tick(i: int, seconds: float) -> None:
                err.print(f"  question {i + 1}/{len(questions)}: {seconds:.1f} s", highlight=False)

            recorded = asyncio.run(record(questions, samples=samples, model=model, config=cfg, params=params,
                                          out_path=pool, on_question=tick))
            source, kind = recorded["source"], params["answer"]
        else:
            assert pool is not None
            sources = pool_sources(pool)
            source = source or max(sorted(sources), key=lambda s: sources[s])
            kind = answer or guess_kind(pool)
        report = asyncio.run(bench(pool, source, kind, ratios=cut, threshold=threshold, initial=initial, batch=batch,
                                   recorded=recorded))
    except (FileNotFoundError, KeyError, ValueError, ConfigError, ModelUnavailable, StopIteration) as exc:
        fail(str(exc))
    table = Table(title=escape(title(report)))
    for name in HEADER:
        table.add_column(name, justify="left" if name == "method" else "right")
    for row in table_rows(report):
        table.add_row(*row)
    lines = goal_lines(report)
    if recorded:
        lines.append(f"recorded {recorded['questions']} questions x {recorded['samples']} samples in "
                     f"{recorded['seconds']:.1f} s ({recorded['completion_tokens']} completion tokens, "
                     f"{recorded['errors']} failed runs): {recorded['pool']}")
    finish_report(table, lines, out_dir, report, markdown(report))
