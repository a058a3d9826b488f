"""Pools that do not fit their data fail loudly (issue 16, point 3): an unknown source, a
task read by the wrong answer type, and unreadable answers counted as agreeing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph.cli.app import app
from refinegraph.models.pool import PoolError, PoolModel

LETTERS = [("Take the last letters of the words in \"Elon Musk\" and concatenate them.", "nk"),
           ("Take the last letters of the words in \"Larry Page\" and concatenate them.", "ye"),
           ("Take the last letters of the words in \"Sergey Brin\" and concatenate them.", "yn")]


def letters_pool(tmp_path: Path, *, task: str | None = "last_letters") -> Path:
    path = tmp_path / "letters.jsonl"
    rows = []
    for i, (question, gold) in enumerate(LETTERS):
        wrong = "xx"
        row = {"id": f"ll-{i}", "question": question, "gold": gold,
               "samples": {"m/cot": [f"The last letters give {gold}. So the answer is {gold}.",
                                     f"So the answer is {wrong}.", f"So the answer is {gold}."]}}
        if task:
            row["task"] = task
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


def config_for(tmp_path: Path, pool: Path, source: str = "m/cot") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[models.m]\nbackend = "pool"\npool_file = "{pool}"\npool_sources = ["{source}"]\n\n'
                      f'[roles]\ndefault = "m"\n')
    return config


def test_a_source_the_pool_does_not_record_is_an_error_naming_the_recorded_ones(tmp_path):
    pool = letters_pool(tmp_path)
    with pytest.raises(PoolError, match=r"records no source 'gpt-9/cot'; its sources: m/cot"):
        PoolModel("m", pool, ["gpt-9/cot"])


def test_bench_pool_refuses_a_config_whose_sources_are_not_in_the_pool(tmp_path):
    pool = letters_pool(tmp_path)
    result = CliRunner().invoke(app, ["bench", "pool", "--pool", str(pool), "--config",
                                      str(config_for(tmp_path, pool, "other/cot")), "--graphs", "greedy",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "other/cot" in result.output and "m/cot" in result.output


def test_bench_pool_reads_a_task_by_its_own_answer_type(tmp_path):
    pool = letters_pool(tmp_path)
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["bench", "pool", "--pool", str(pool), "--config", str(config_for(tmp_path, pool)),
                                      "--graphs", "greedy,self-consistency", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answer"] == "letters"
    rows = {r["method"]: r for r in summary["summary"]}
    assert rows["greedy"]["accuracy"] == 1.0 and rows["self-consistency"]["accuracy"] == 1.0
    # The report says how to make it again, and plots accuracy against cost.
    assert summary["command"].startswith("refinegraph bench pool --pool ")
    assert "--graphs greedy,self-consistency" in summary["command"] and (out / "accuracy.png").is_file()


def test_an_answer_type_that_reads_no_gold_is_refused(tmp_path):
    pool = letters_pool(tmp_path)
    result = CliRunner().invoke(app, ["bench", "pool", "--pool", str(pool), "--config", str(config_for(tmp_path, pool)),
                                      "--answer", "number", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "reads only 0 of 3 gold answers" in result.output and "'letters'" in result.output


def test_a_pool_that_names_no_task_needs_an_answer_type(tmp_path):
    pool = letters_pool(tmp_path, task=None)
    result = CliRunner().invoke(app, ["bench", "pool", "--pool", str(pool), "--config", str(config_for(tmp_path, pool)),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "name no task" in result.output and "letters" in result.output


def test_unreadable_answers_never_agree(tmp_path):
    from refinegraph.bench.allocation import _row

    row = _row("adaptive", "adaptive", [1, 1, 1], [None, None, "7"], [None, "3", "7"], ["1", "3", "7"], 9)
    assert row["agree"] == 1 and row["correct"] == 1


def test_bench_allocation_reads_the_pool_by_its_task(tmp_path):
    pool = letters_pool(tmp_path)
    result = CliRunner().invoke(app, ["bench", "allocation", "--pool", str(pool), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    sc = next(r for r in report["methods"] if r["method"] == "SC@all")
    assert sc["correct"] == 3 and sc["answers"] == ["nk", "ye", "yn"]


@pytest.mark.parametrize("graph, role, extra", [("self-refine", "critic", []), ("best-of-n", "reward", []),
                                                ("sets", "verifier", []), ("magicore", "reward", []),
                                                ("acar", "judge", ["-p", "acar.judge=true"])])
def test_a_judging_role_played_by_a_pool_is_refused(tmp_path, graph, role, extra):
    """Issue 16, point 4: a pool answers a critic's or judge's prompt with recorded reasoning."""
    pool = letters_pool(tmp_path)
    result = CliRunner().invoke(app, ["bench", "pool", "--pool", str(pool), "--config", str(config_for(tmp_path, pool)),
                                      "--graphs", graph, *extra, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert f"role {role!r}" in result.output and "pool model 'm'" in result.output


def test_a_live_model_in_the_judging_role_is_accepted(tmp_path):
    from refinegraph.bench.common import check_live_roles
    from refinegraph.config import Config, ModelSpec

    pool = letters_pool(tmp_path)
    config = Config(models={"m": ModelSpec(backend="pool", pool_file=str(pool)), "live": ModelSpec(backend="local")},
                    roles={"default": "m", "critic": "live", "refiner": "live"})
    check_live_roles("self-refine", {}, config)
    with pytest.raises(ValueError, match="roles.judge = one of: live"):
        check_live_roles("acar", {}, config)
    check_live_roles("acar", {"judge": False}, config)


def two_source_pool(path: Path, words: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "task": "last_letters", "question": question, "gold": gold,
                                        "samples": {"weak": ["So the answer is zz."],
                                                    "strong": [f"So the answer is {gold}."]}}) + "\n"
                            for i, (question, gold) in enumerate(words)))
    return path


def test_bench_pool_select_on_orders_sources_on_other_questions(tmp_path):
    """Issue 16, point 2: the order a vote breaks ties by is chosen on a selection pool."""
    report = two_source_pool(tmp_path / "report.jsonl", LETTERS)
    dev = two_source_pool(tmp_path / "dev.jsonl", [("Take the last letters of \"Ada Lovelace\".", "ae")])
    config = tmp_path / "two.toml"
    config.write_text(f'[models.m]\nbackend = "pool"\npool_file = "{report}"\npool_sources = ["weak", "strong"]\n\n'
                      f'[roles]\ndefault = "m"\n')
    base = ["bench", "pool", "--pool", str(report), "--config", str(config), "--graphs", "self-consistency",
            "-p", "n=2"]
    plain = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "plain")])
    chosen = CliRunner().invoke(app, [*base, "--select-on", str(dev), "--out", str(tmp_path / "chosen")])
    assert plain.exit_code == 0 and chosen.exit_code == 0, plain.output + chosen.output
    accuracy = {name: json.loads((tmp_path / name / "summary.json").read_text())["summary"][0]["accuracy"]
                for name in ("plain", "chosen")}
    assert accuracy == {"plain": 0.0, "chosen": 1.0}
    selection = json.loads((tmp_path / "chosen" / "summary.json").read_text())["selection"]
    assert selection["orders"] == {"m": ["strong", "weak"]} and selection["source_accuracy"]["strong"] == 1.0
    peek = CliRunner().invoke(app, [*base, "--select-on", str(report), "--out", str(tmp_path / "peek")])
    assert peek.exit_code == 2 and "peek" in peek.output
