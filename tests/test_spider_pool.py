"""Our execution accuracy on 127 recorded systems reproduces the published counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from refinegraph.bench.spider_pool import score_pool, system_accuracy, vote_accuracy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
POOL = SHARED / "pools" / "spider_dev_systems.jsonl"

pytestmark = pytest.mark.skipif(not POOL.is_file(), reason=f"the shared Spider pool is not at {POOL}")


@pytest.fixture(scope="module")
def scored():
    return score_pool(POOL, SHARED / "spider_dev" / "database")


def test_the_pool_is_whole(scored):
    assert len(scored) == 731
    assert len({s for q in scored for s in q.results}) == 127


def test_hypersql_alone(scored):
    assert system_accuracy(scored)["HyperSQL"] == pytest.approx(0.829, abs=0.005)


def test_vote_over_the_best_nine_and_over_all(scored):
    accuracy = system_accuracy(scored)
    ranked = sorted(accuracy, key=lambda s: -accuracy[s])
    assert vote_accuracy(scored, ranked[:9]) == pytest.approx(0.852, abs=0.005)
    assert vote_accuracy(scored, ranked) == pytest.approx(0.795, abs=0.005)


def test_bench_spider_through_the_pool_backend(tmp_path):
    """`bench spider --pool` runs sql-sc's vote over chosen systems through the graph."""
    import json

    from typer.testing import CliRunner

    from refinegraph.cli.app import app

    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "bench", "spider", "--data", str(SHARED / "spider_dev"), "--pool", str(POOL), "--limit", "6",
        "--systems", "HyperSQL,SuperSQL,DIN_SQL_GPT4", "--graphs", "sql-sc,csc-sql", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [row["method"] for row in summary["summary"]] == ["sql-sc", "csc-sql"]
    assert summary["systems"] == ["HyperSQL", "SuperSQL", "DIN_SQL_GPT4"] and summary["params"]["n"] == 3
    sc = summary["summary"][0]
    first_six = {q["question"] for q in json.loads((SHARED / "spider_dev" / "dev.json").read_text())[:6]}
    direct = vote_accuracy(score_pool(POOL, SHARED / "spider_dev" / "database", questions=first_six),
                           ["HyperSQL", "SuperSQL", "DIN_SQL_GPT4"])
    assert sc["questions"] == 6 and sc["ex"] == pytest.approx(direct, abs=1e-3)
    assert sc["mean_tokens"] > 0  # estimated from the recorded text
    lines = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(line["run_id"] for line in lines)
    assert (out / "accuracy.png").stat().st_size > 1000
