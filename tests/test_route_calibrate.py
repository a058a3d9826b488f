"""ACAR calibrated from recorded outputs: the offline replay agrees with the ACAR graph run
through the pool backend, the fit picks the cut-points worked out by hand, and the CLI's
snippet configures ACAR. The tests carry their own tiny pool (four questions)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph import replay, run
from refinegraph.cli.app import app
from refinegraph.config import Config, ModelSpec
from refinegraph.graphs.acar_calibration import (
    Arm,
    PoolOutputs,
    acar_answer,
    build_cases,
    cut_point_grid,
    evaluate,
    fit,
    probe_arms,
    reference_cost,
)
from refinegraph.graphs.acar_runs import read_gold, recorded_pool
from refinegraph.registry import get_graph

# question -> (gold, cheap model's six samples, mid's answer, big's answer)
QUESTIONS = {
    "How many apples are left? (q0)": ("5", [5, 5, 5, 5, 5, 5], 5, 5),       # sigma 0
    "How many pears are left? (q1)": ("7", [3, 4, 3, 3, 3, 3], 7, 7),        # sigma 0.5
    "How many plums are left? (q2)": ("8", [1, 2, 3, 9, 9, 9], 8, 8),        # sigma 1, a majority
    "How many figs are left? (q3)": ("6", [1, 2, 3, 4, 4, 4], 5, 6),         # sigma 1, no majority
}
ARM = Arm("cheap", 3, ("cheap", "mid", "big"))


def said(n: int) -> str:
    return f"Counting step by step gives {n}. The answer is {n}."


@pytest.fixture
def pool(tmp_path) -> Path:
    path = tmp_path / "tiny_pool.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, (question, (gold, cheap, mid, big)) in enumerate(QUESTIONS.items()):
            f.write(json.dumps({"id": f"tiny-{i}", "task": "gsm8k", "question": question, "gold": gold,
                                "samples": {"cheap/s": [said(n) for n in cheap], "mid/cot": [said(mid)],
                                            "big/cot": [said(big)]}}) + "\n")
    return path


def config_for(pool: Path) -> Config:
    def model(source: str, price: float) -> ModelSpec:
        return ModelSpec(backend="pool", pool_file=str(pool), pool_sources=[source], price_input_per_mtok=price,
                         price_output_per_mtok=price)
    return Config(models={"cheap": model("cheap/s", 1.0), "mid": model("mid/cot", 4.0), "big": model("big/cot", 20.0)},
                  roles={"default": "cheap"})


@pytest.mark.parametrize("thresholds", [(0.3, 0.7), (0.0, 0.25), (0.75, 1.0), (0.25, 0.75)])
async def test_the_offline_replay_decides_as_the_acar_graph(pool, store, thresholds):
    config = config_for(pool)
    outputs = PoolOutputs(config, "number")
    params = {**ARM.params(thresholds), "judge": False, "mode_params": {"n": 1, "answer": "number"}}
    for entry in outputs.entries():
        case = outputs.case(ARM, entry)
        answer, cost, mode = acar_answer(case, thresholds)
        result = await run("acar", entry["question"], config=config, params=params, store=store, checkpoint=False)
        assert (result.state["mode"], result.state["winner"]) == (mode, answer), entry["question"]
        assert result.cost_usd == pytest.approx(cost, rel=1e-6)


def test_cut_point_grid_splits_between_observed_values():
    assert cut_point_grid([0.0, 0.5, 1.0, 0.5]) == [(0.0, 0.25), (0.0, 0.75), (0.0, 1.0), (0.25, 0.75),
                                                    (0.25, 1.0), (0.75, 1.0)]
    assert cut_point_grid([0.0]) == [(0.0, 0.5), (0.0, 1.0), (0.5, 1.0)]


def test_fit_picks_the_hand_worked_cut_points(pool):
    """By hand: fixed (0.3, 0.7) sends q1 to two models, whose vote with the probes says 3
    (wrong): 3/4. (0, 0.25) sends q1 to all three (7, right) and q0 to two: 4/4, the most
    expensive. (0.75, 1) answers q0 and q1 from the probes: 3/4, the cheapest 3/4."""
    outputs = PoolOutputs(config_for(pool), "number")
    cases = build_cases(outputs, [ARM], outputs.entries())[ARM]
    assert [c.sigma for c in cases] == [0.0, 0.5, 1.0, 1.0]
    fixed = evaluate(ARM, cases, (0.3, 0.7))
    assert fixed.accuracy == 0.75 and fixed.modes == {"one": 1, "two": 1, "three": 2}
    best, cheap = evaluate(ARM, cases, (0.0, 0.25)), evaluate(ARM, cases, (0.75, 1.0))
    assert best.accuracy == 1.0 and cheap.accuracy == 0.75 and cheap.cost < fixed.cost < best.cost
    reference = reference_cost(cases)
    assert fit({ARM: cases}, 1.0, reference).point.thresholds == (0.0, 0.25)
    tight = fit({ARM: cases}, (best.cost - 1e-9) / reference, reference)
    assert tight.feasible and tight.point.thresholds == (0.75, 1.0)  # 3/4 at the least cost
    impossible = fit({ARM: cases}, 0.01, reference)
    assert not impossible.feasible and impossible.point.cost == min(
        evaluate(ARM, cases, t).cost for t in cut_point_grid([c.sigma for c in cases]))


def test_probe_count_is_part_of_the_fit(pool):
    """Two probes (5,5 / 3,4 / 1,2 / 1,2) see q1 as full disagreement: with (0.5, 1) q1
    goes to all three models (7, right) while q0 stays with the probes: 4/4, cheaper than
    three probes reach 4/4."""
    outputs = PoolOutputs(config_for(pool), "number")
    entries = outputs.entries()
    arms = probe_arms(outputs, ARM, ["cheap"], entries)
    assert [a.probes for a in arms] == [3, 2, 4, 5]  # six samples, one kept for the mode: five probes at most
    cases = build_cases(outputs, arms, entries)
    fitted = fit(cases, 1.0, reference_cost(cases[ARM]))
    assert fitted.point.arm.probes == 2 and fitted.point.thresholds == (0.5, 1.0) and fitted.point.accuracy == 1.0


def test_cli_calibrate_writes_a_snippet_that_configures_acar(pool, tmp_path):
    config = tmp_path / "pool.toml"
    config.write_text("\n".join(
        [f'[models.{name}]\nbackend = "pool"\npool_file = "{pool}"\npool_sources = ["{source}"]\n'
         f"price_input_per_mtok = {price}\nprice_output_per_mtok = {price}\n"
         for name, source, price in [("cheap", "cheap/s", 1.0), ("mid", "mid/cot", 4.0), ("big", "big/cot", 20.0)]]
        + ['[roles]\ndefault = "cheap"\nprobe = "cheap"\n']), encoding="utf-8")
    snippet = tmp_path / "acar.toml"
    result = CliRunner().invoke(app, ["route", "calibrate", "--runs", str(pool), "--config", str(config),
                                      "--cost-target", "1.0", "-o", str(snippet)])
    assert result.exit_code == 0, result.output
    pipeline = Config(models=config_for(pool).models, roles={"default": "cheap"},
                      **tomllib.loads(snippet.read_text())).pipelines["acar-calibrated"]
    assert pipeline.graph == "acar" and pipeline.params["thresholds"] == [0.5, 1.0]
    assert pipeline.params["probes"] == 2 and pipeline.params["models"] == ["cheap", "mid", "big"]
    get_graph("acar").build(pipeline.params)  # ACAR takes them as they are


def test_cli_calibrate_rejects_what_it_cannot_read(tmp_path):
    missing = CliRunner().invoke(app, ["route", "calibrate", "--runs", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such pool file" in missing.output
    target = CliRunner().invoke(app, ["route", "calibrate", "--runs", str(tmp_path), "--cost-target", "1.5"])
    assert target.exit_code == 2


async def test_calibrating_from_the_trace_store_matches_the_pool(pool, tmp_path, store, rg_home):
    """Record every model on every question (the probe model's six samples in one run, each mode
    model greedy), then calibrate from the store: the same fit as from the pool itself. A
    question one model was not run on is left out, and said so."""
    config = config_for(pool)
    questions = list(QUESTIONS)
    for question in questions:
        await run("self-consistency", question, config=config, params={"n": 6}, store=store, checkpoint=False)
        for name in ("mid", "big") if question != questions[3] else ("mid",):
            await run("greedy", question, config=config.with_model(name), store=store, checkpoint=False)
    probing = next(r["run_id"] for r in store.all_runs() if r["graph"] == "self-consistency")
    await replay(probing, store=store)  # a replay repeats its original: not counted twice
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"question": q, "gold": g}) + "\n" for q, (g, *_) in QUESTIONS.items()))
    recorded = recorded_pool(store, read_gold(gold), ["cheap", "mid", "big"])
    assert [{m: len(t) for m, t in e["samples"].items()} for e in recorded.entries] == [
        {"cheap": 6, "mid": 1, "big": 1}] * 3
    assert recorded.prices["big"] == (20.0, 20.0)
    store.close()
    snippet = tmp_path / "from-traces.toml"
    result = CliRunner().invoke(app, ["route", "calibrate", "--runs", "trace", "--gold", str(gold), "--probe", "cheap",
                                      "--models", "cheap,mid,big", "--cost-target", "1.0", "-o", str(snippet)])
    assert result.exit_code == 0, result.output
    assert "3 questions usable" in result.output and "1 questions some model did not answer (big)" in result.output
    params = tomllib.loads(snippet.read_text())["pipelines"]["acar-calibrated"]["params"]
    outputs = PoolOutputs(config, "number")
    entries = [e for e in outputs.entries() if e["question"] != questions[3]]
    cases = build_cases(outputs, probe_arms(outputs, ARM, ["cheap"], entries), entries)
    expected = fit(cases, 1.0, reference_cost(cases[ARM])).point
    assert params == expected.arm.params(expected.thresholds)
    missing = CliRunner().invoke(app, ["route", "calibrate", "--runs", "trace", "--probe", "cheap",
                                       "--models", "cheap,mid,big"])
    assert missing.exit_code == 2 and "--gold" in missing.output
