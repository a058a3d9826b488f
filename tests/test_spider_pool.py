"""Recorded text-to-SQL systems on a Spider excerpt: scoring, votes, and choosing systems on
one split while reporting on another (issue 16, points 1 and 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph.bench.spider_pool import score_pool, system_accuracy, vote_accuracy
from refinegraph.cli.app import app

MINI = Path(__file__).parent / "data" / "spider_mini"
POOL = MINI / "pool.jsonl"


@pytest.fixture(scope="module")
def scored():
    return score_pool(POOL, MINI / "database")


def test_the_excerpt_is_whole(scored):
    assert len(scored) == 127
    assert len({s for q in scored for s in q.results}) == 9


def test_system_accuracy_under_each_metric(scored):
    spider = system_accuracy(scored)
    assert spider["SuperSQL"] == pytest.approx(123 / 127)
    bird = system_accuracy(score_pool(POOL, MINI / "database", metric="bird"))
    assert bird["SuperSQL"] == pytest.approx(115 / 127)


def test_plain_and_weighted_votes(scored):
    accuracy = system_accuracy(scored)
    ranked = sorted(accuracy, key=lambda s: (-accuracy[s], s))
    assert vote_accuracy(scored, ranked[:5]) == pytest.approx(124 / 127)
    # Equal weights are the plain vote; weights that trust the weakest system follow it down.
    assert vote_accuracy(scored, ranked, {s: 1.0 for s in ranked}) == vote_accuracy(scored, ranked)
    alone = {s: (1.0 if s == "Llama2-7B" else 0.0) for s in ranked}
    assert vote_accuracy(scored, ranked, alone) < vote_accuracy(scored, ranked) - 0.05


def halves(tmp_path: Path) -> tuple[Path, Path]:
    """Two Spider folders holding the even and the odd questions of the excerpt."""
    items = json.loads((MINI / "dev.json").read_text())
    folders = []
    for name, part in (("even", items[0::2]), ("odd", items[1::2])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "database").symlink_to((MINI / "database").resolve())
        (folder / "dev.json").write_text(json.dumps(part))
        folders.append(folder)
    return folders[0], folders[1]


def test_bench_spider_through_the_pool_backend(tmp_path):
    """`bench spider --pool` runs sql-sc's vote over named systems through the graph."""
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "bench", "spider", "--data", str(MINI), "--pool", str(POOL), "--limit", "6",
        "--systems", "HyperSQL,SuperSQL,DIN_SQL_GPT4", "--graphs", "sql-greedy,sql-sc", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "sql-greedy answers with the first system's SQL (HyperSQL)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [row["method"] for row in summary["summary"]] == ["sql-greedy", "sql-sc"]
    assert summary["systems"] == ["HyperSQL", "SuperSQL", "DIN_SQL_GPT4"] and summary["params"]["n"] == 3
    greedy, sc = summary["summary"]
    first_six = {q["question"] for q in json.loads((MINI / "dev.json").read_text())[:6]}
    direct = score_pool(POOL, MINI / "database", questions=first_six)
    assert sc["questions"] == 6 and sc["ex"] == pytest.approx(vote_accuracy(direct, summary["systems"]), abs=1e-3)
    assert greedy["ex"] == pytest.approx(system_accuracy(direct)["HyperSQL"], abs=1e-3)
    assert sc["mean_tokens"] > 0  # estimated from the recorded text
    assert (out / "accuracy.png").stat().st_size > 1000


def test_csc_sql_on_a_pool_says_its_merger_is_a_live_model(tmp_path, monkeypatch):
    """Issue 16, point 6: csc-sql's merge started the embedded model unasked; now a line says
    which live model merges (here a scripted stand-in for it), and the run goes on."""
    from refinegraph.models import ScriptedModel
    from refinegraph.runs import execute

    built, real = [], execute.build_model

    def scripted(name, spec):  # the live merger scripted, the pool itself real
        built.append((name, spec.backend))
        return ScriptedModel(lambda messages: "SELECT 1", name=name) if spec.backend == "local" else real(name, spec)

    monkeypatch.setattr("refinegraph.runs.execute.build_model", scripted)
    result = CliRunner().invoke(app, [
        "bench", "spider", "--data", str(MINI), "--pool", str(POOL), "--limit", "2",
        "--systems", "HyperSQL,SuperSQL,DIN_SQL_GPT4", "--graphs", "csc-sql", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "note: csc-sql's merger is a live model: 'local' (backend local)" in result.output
    assert ("local", "local") in built


def test_select_on_ranks_on_one_split_and_scores_another(tmp_path):
    even, odd = halves(tmp_path)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "bench", "spider", "--data", str(odd), "--pool", str(POOL), "--top", "3", "--select-on", str(even),
        "--graphs", "sql-sc", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    selection = summary["selection"]
    even_questions = {q["question"] for q in json.loads((even / "dev.json").read_text())}
    on_even = system_accuracy(score_pool(POOL, MINI / "database", questions=even_questions))
    ranked = sorted(on_even, key=lambda s: (-on_even[s], s))
    assert summary["systems"] == ranked[:3] and selection["selected_on"] == "even"
    assert selection["selection_questions"] == 64
    odd_scored = score_pool(POOL, MINI / "database",
                            questions={q["question"] for q in json.loads((odd / "dev.json").read_text())})
    offline = selection["offline"]
    assert offline["best_single"] == {"system": ranked[0],
                                      "ex": round(system_accuracy(odd_scored)[ranked[0]], 4)}
    assert offline["vote"] == round(vote_accuracy(odd_scored, ranked[:3]), 4)
    assert set(selection["weights"]) == set(ranked[:3]) and offline["weighted_vote"] is not None
    assert summary["summary"][0]["ex"] == pytest.approx(offline["vote"], abs=1e-3)


def test_select_on_refuses_to_peek(tmp_path):
    even, _ = halves(tmp_path)
    result = CliRunner().invoke(app, ["bench", "spider", "--data", str(even), "--pool", str(POOL), "--top", "3",
                                      "--select-on", str(even), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "peek" in result.output


def test_unknown_systems_are_an_error_naming_the_available_ones(tmp_path):
    result = CliRunner().invoke(app, ["bench", "spider", "--data", str(MINI), "--pool", str(POOL), "--systems",
                                      "HyperSQL,GPT-9", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "GPT-9" in result.output and "SuperSQL" in result.output
