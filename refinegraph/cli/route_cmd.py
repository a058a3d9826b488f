"""`refinegraph route calibrate | frontier`: ACAR's cut-points fitted to a cost target from
recorded outputs (graphs/acar_calibration.py), as a config snippet or a frontier report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from refinegraph.cli.common import err, fail, out

app = typer.Typer(no_args_is_help=True, add_completion=False)  # its help: refinegraph.cli.app.GROUPS

RUNS_HELP = ("Recorded outputs: a pool file (data/pools/*.jsonl), or `trace` (every run of the trace store) or "
             "`trace:GRAPH,...` (runs of those graphs), with --gold, --probe and --models.")
GOLD_HELP = "With --runs trace: the gold answers, a pool file or a GSM8K-format jsonl (traces record none)."
PROBE_HELP = "The probe model (default: the pool's default; required with --runs trace)."
MODELS_HELP = "The three mode models, cheapest first, comma-separated (required with --runs trace)."


def _from_traces(runs: str, gold: Path | None, probe: str | None, models: list[str]) -> tuple[Path, Any]:
    """The trace store's task completions written as a pool file (graphs/acar_runs.py), and its config."""
    import tempfile

    from refinegraph.cli.common import open_store
    from refinegraph.graphs.acar_runs import read_gold, recorded_pool, write_recorded

    if gold is None or not gold.is_file():
        fail("--runs trace needs --gold FILE (a pool file or a GSM8K-format jsonl): traces record no gold answers")
    if not probe or not models:
        fail("--runs trace needs --probe MODEL and --models A,B,C (the model names the runs recorded)")
    graphs = {g.strip() for g in runs.partition(":")[2].split(",") if g.strip()} or None
    store = open_store()
    try:
        recorded = recorded_pool(store, read_gold(gold), [probe, *models], graphs=graphs)
    finally:
        store.close()
    skipped = "; ".join(f"{count} {why}" for why, count in recorded.skipped.items()) or "none"
    err.print(f"trace store: {recorded.runs} runs, {len(recorded.entries)} questions usable; skipped: {skipped}",
              highlight=False)
    if len(recorded.entries) < 2:
        fail("fewer than two recorded questions have answers from every model named and a gold answer")
    path = Path(tempfile.mkdtemp(prefix="refinegraph-route-")) / "recorded.jsonl"
    return path, write_recorded(recorded, path)


def _setup(runs: str, config_path: Path | None, probe_models: list[str], answer: str | None, *,
           gold: Path | None = None, probe: str | None = None, models_option: str | None = None
           ) -> tuple[Any, Any, list[str], Any]:
    """(outputs, base arm, probe models to consider, config) for recorded outputs and an optional config."""
    from refinegraph.bench.pool import answer_kind, default_config, load_pool, with_pool_file
    from refinegraph.config import ConfigError, load_config
    from refinegraph.graphs.acar_calibration import Arm, PoolOutputs

    chosen = [m.strip() for m in (models_option or "").split(",") if m.strip()]
    if runs == "trace" or runs.startswith("trace:"):
        path, config = _from_traces(runs, gold, probe, chosen)
        kind = answer or "number"
        default_probe, models = probe, chosen
    else:
        path = Path(runs)
        if not path.is_file():
            fail(f"--runs {runs!r}: no such pool file, and not `trace` (see docs/methods.md)")
        try:
            _, task = load_pool(path, limit=1)
        except (ValueError, KeyError) as exc:
            fail(f"--runs {runs!r} is not a pool file: {exc}")
        kind = answer or answer_kind(task, path)
        if config_path is not None:
            try:
                config = with_pool_file(load_config(config_path), path)
            except ConfigError as exc:
                fail(str(exc))
            names = [n for n, s in config.models.items() if s.backend == "pool"]
            if not names:
                fail(f"{config_path}: no model of backend \"pool\" to calibrate with")
            default_probe, models = config.model_for_role("probe"), names[:3]  # as `bench pool`: file order
        else:
            config, defaults = default_config(path, task)
            default_probe, models = defaults["acar"]["probe_model"], defaults["acar"]["models"]
        default_probe, models = probe or default_probe, chosen or models
    models = (list(models) + [models[-1]] * 3)[:3]
    unknown = [m for m in [default_probe, *models, *probe_models] if m not in config.models]
    if unknown:
        fail(f"unknown model(s) {', '.join(unknown)}; configured: {', '.join(sorted(config.models))}")
    return (PoolOutputs(config, kind), Arm(default_probe, 3, tuple(models)), [default_probe, *probe_models],
            config)


@app.command("calibrate")
def calibrate(
    runs: str = typer.Option(..., "--runs", help=RUNS_HELP),
    cost_target: float = typer.Option(0.5, "--cost-target", min=0.0, max=1.0,
                                      help="Mean cost allowed, as a share of the probes plus all three models "
                                           "on every question."),
    config: Path | None = typer.Option(None, "--config", help="Pool models (default: the pool's own defaults, "
                                                              "as `bench pool`)."),
    probe_model: list[str] = typer.Option([], "--probe-model", help="Another probe model to consider (repeat)."),
    answer: str | None = typer.Option(None, "--answer", help="Answer type (default: from the pool's task)."),
    gold: Path | None = typer.Option(None, "--gold", help=GOLD_HELP),
    probe: str | None = typer.Option(None, "--probe", help=PROBE_HELP),
    models: str | None = typer.Option(None, "--models", help=MODELS_HELP),
    limit: int | None = typer.Option(None, "--limit", min=2, help="Only the first N questions."),
    name: str = typer.Option("acar-calibrated", "--name", help="The pipeline's name in the snippet."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the snippet here (default: stdout)."),
) -> None:
    """Fit ACAR's cut-points (and probe model and count) for the best accuracy at a cost target;
    print a config snippet: a pipeline running ACAR with them."""
    from refinegraph.graphs.acar_calibration import CalibrationError, build_cases, fit, probe_arms, reference_cost
    from refinegraph.graphs.acar_calibration import snippet as make_snippet

    outputs, base, probes, cfg = _setup(runs, config, probe_model, answer, gold=gold, probe=probe,
                                        models_option=models)
    try:
        entries = outputs.entries()[:limit]
        cases = build_cases(outputs, probe_arms(outputs, base, probes, entries), entries)
        if base not in cases:
            fail(f"the probe and mode models {base} cannot be served on every question of {runs}")
        fitted = fit(cases, cost_target, reference_cost(cases[base]))
    except CalibrationError as exc:
        fail(str(exc))
    text = make_snippet(fitted, cfg, name=name, source=f"{Path(runs).name}, cost target {cost_target:g}")
    point = fitted.point
    err.print(f"fitted on {point.questions} questions ({fitted.considered} arm x cut-point pairs): accuracy "
              f"{point.accuracy:.4f}, mean cost {point.cost:.6g} = {point.cost / fitted.reference:.3f} of the "
              f"reference{'' if fitted.feasible else ' (no point within the target: the cheapest)'}", highlight=False)
    if output:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}", highlight=False)
    else:
        typer.echo(text, nl=False)


@app.command("frontier")
def frontier_cmd(
    runs: str = typer.Option(..., "--runs", help=RUNS_HELP),
    targets: str = typer.Option("0.05,0.1,0.15,0.2,0.3,0.4,0.5,0.6,0.8,1.0", "--targets",
                                help="Cost targets (shares of the reference cost), comma-separated."),
    config: Path | None = typer.Option(None, "--config", help="Pool models (default: the pool's own defaults)."),
    probe_model: list[str] = typer.Option([], "--probe-model", help="Another probe model to consider (repeat)."),
    answer: str | None = typer.Option(None, "--answer", help="Answer type (default: from the pool's task)."),
    gold: Path | None = typer.Option(None, "--gold", help=GOLD_HELP),
    probe: str | None = typer.Option(None, "--probe", help=PROBE_HELP),
    models: str | None = typer.Option(None, "--models", help=MODELS_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the split into a fitting half and a reported half."),
    limit: int | None = typer.Option(None, "--limit", min=4, help="Only the first N questions."),
    out_dir: Path = typer.Option(Path("route-frontier"), "--out", help="Report folder."),
) -> None:
    """Calibrated ACAR at each cost target beside the fixed cut-points and each single model:
    fitted on one half of the pool, reported on the other; writes report.json, report.md, frontier.png."""
    from refinegraph.bench.report import environment, write_report
    from refinegraph.graphs.acar_calibration import CalibrationError, frontier

    try:
        values = [float(t) for t in targets.split(",") if t.strip()]
    except ValueError:
        fail(f"--targets {targets!r}: comma-separated numbers, e.g. 0.25,0.5,1")
    if not values or not all(0 < v <= 1 for v in values):
        fail(f"--targets {targets!r}: each target must be in (0, 1]")
    outputs, base, probes, _ = _setup(runs, config, probe_model, answer, gold=gold, probe=probe, models_option=models)
    try:
        report = frontier(outputs, base, probes, values, seed=seed, limit=limit)
    except CalibrationError as exc:
        fail(str(exc))
    report.update({"pool": Path(runs).name if Path(runs).is_file() else runs, "environment": environment()})
    markdown = _markdown(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(report, out_dir / "frontier.png")
    json_path, md_path = write_report(out_dir, report, markdown)
    out.print(_table(report))
    err.print(f"wrote {json_path}, {md_path}, {out_dir / 'frontier.png'}", highlight=False)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for point in report["calibrated"]:
        test, arm = point["test"], point["test"]["arm"]
        mark = "" if point["feasible"] else " (cheapest; target not reachable)"
        rows.append([f"calibrated @ {point['target']:g}{mark}", f"{100 * test['accuracy']:.1f}",
                     f"{point['test_relative_cost']:.3f}", f"{arm['probe_model']} x{arm['probes']}",
                     f"{test['thresholds'][0]:g}, {test['thresholds'][1]:g}"])
    fixed = report["fixed"]
    rows.append(["fixed cut-points", f"{100 * fixed['accuracy']:.1f}", f"{fixed['relative_cost']:.3f}",
                 f"{fixed['arm']['probe_model']} x{fixed['arm']['probes']}",
                 f"{fixed['thresholds'][0]:g}, {fixed['thresholds'][1]:g}"])
    for model, single in report["singles"].items():
        strongest = " (strongest on the fitting half)" if model == report["strongest_single"] else ""
        rows.append([f"{model} alone{strongest}", f"{100 * single['accuracy']:.1f}",
                     f"{single['relative_cost']:.3f}", "", ""])
    return rows


HEADER = ["method", "accuracy %", "cost (share of reference)", "probes", "cut-points"]


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=f"ACAR calibrated on {report['fit_questions']} questions of {report['pool']}, "
                        f"reported on the other {report['test_questions']}")
    for column in HEADER:
        table.add_column(column)
    for row in _rows(report):
        table.add_row(*row)
    return table


def _markdown(report: dict[str, Any]) -> str:
    from refinegraph.bench.report import md_table

    return (f"# ACAR calibrated from {report['pool']}\n\nFitted on {report['fit_questions']} questions, reported "
            f"on the other {report['test_questions']} (split seed {report['seed']}). Cost: mean per question as a "
            f"share of the reference (probes plus all three models on every question: "
            f"{report['reference_cost_test']:.6g} on the reported half).\n\n"
            + md_table(HEADER, _rows(report)) + "\n")


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    points = sorted({(p["test_relative_cost"], p["test"]["accuracy"]) for p in report["calibrated"]})
    axes.plot([c for c, _ in points], [100 * a for _, a in points], "o-", label="calibrated ACAR")
    fixed = report["fixed"]
    axes.scatter([fixed["relative_cost"]], [100 * fixed["accuracy"]], marker="s", s=60, label="fixed (0.3, 0.7)")
    for model, single in report["singles"].items():
        axes.scatter([single["relative_cost"]], [100 * single["accuracy"]], marker="^", s=45, label=model)
    axes.set_xlabel("mean cost per question (share of the reference)")
    axes.set_ylabel("accuracy on the reported half (%)")
    axes.set_title(f"{report['pool']}: fitted on {report['fit_questions']}, reported on {report['test_questions']}",
                   fontsize=9)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
