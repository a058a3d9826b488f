"""Spider's and BIRD's execution metrics, as their official evaluators compute them (issue 16, point 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph.cli.app import app

MINI = Path(__file__).parent / "data" / "spider_mini"

# (gold, prediction, right under Spider's metric, right under BIRD's), on concert_singer.
CASES = [
    # Columns in another order: Spider accepts a permutation, BIRD compares tuples.
    ("SELECT name, country FROM singer", "SELECT country, name FROM singer", True, False),
    # The same set of rows but not the same bag: BIRD accepts, Spider does not.
    ("SELECT country FROM singer", "SELECT country FROM singer GROUP BY country", False, True),
    # Spider's evaluator drops every DISTINCT, also inside COUNT(...).
    ("SELECT count(DISTINCT country) FROM singer", "SELECT count(*) FROM singer", True, False),
    # ... and in the gold: without that, the bags would differ.
    ("SELECT DISTINCT country FROM singer", "SELECT country FROM singer", True, True),
    # Gold text with "order by": row order counts for Spider, never for BIRD.
    ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age DESC", False, True),
    ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age", True, True),
    ("SELECT name FROM singer", "SELECT nme FROM singer", False, False),
]


def test_spider_match_takes_column_permutations_and_bags():
    from refinegraph.tools.sql.compare import spider_results_match

    gold = [(1, "a"), (1, "a"), (2, "b")]
    assert spider_results_match([("a", 1), ("b", 2), ("a", 1)], gold, ordered=False)
    assert not spider_results_match([("a", 1), ("b", 2), ("b", 2)], gold, ordered=False)
    assert not spider_results_match([("b", 2), ("a", 1), ("a", 1)], gold, ordered=True)
    assert spider_results_match([], [], ordered=True)
    assert not spider_results_match([(1,)], [(1, 1)], ordered=False)


def test_spider_rewrite_reproduces_the_official_quirks():
    from refinegraph.tools.sql.compare import spider_rewrite

    assert spider_rewrite("SELECT count(DISTINCT a) FROM t WHERE b > = 2", predicted=False) == \
        "SELECT count( a) FROM t WHERE b >= 2"
    assert spider_rewrite("SELECT max_value FROM t WHERE x = 'value'", predicted=True) == \
        "SELECT max_1 FROM t WHERE x = '1'"
    assert spider_rewrite("SELECT 'distinct' FROM t", predicted=False) == "SELECT 'distinct' FROM t"


@pytest.fixture
def cases(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "cases"
    data.mkdir()
    (data / "database").symlink_to((MINI / "database").resolve())
    items = [{"db_id": "concert_singer", "question": f"Case {i}: which singers?", "query": gold}
             for i, (gold, *_rest) in enumerate(CASES)]
    (data / "dev.json").write_text(json.dumps(items))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": str(i), "task": "spider", "db_id": "concert_singer",
                                        "question": item["question"], "gold": item["query"],
                                        "samples": {"cand": [CASES[i][1]]}}) + "\n"
                            for i, item in enumerate(items)))
    return data, pool


@pytest.mark.parametrize("metric", [None, "spider", "bird"])
def test_bench_spider_scores_each_question_under_the_chosen_metric(cases, tmp_path, metric):
    data, pool = cases
    out = tmp_path / f"report-{metric}"
    args = ["bench", "spider", "--data", str(data), "--pool", str(pool), "--systems", "cand",
            "--graphs", "sql-greedy", "--out", str(out)] + (["--metric", metric] if metric else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == (metric or "spider")  # Spider's layout: Spider's metric by default
    lines = sorted((json.loads(x) for x in (out / "questions.jsonl").read_text().splitlines()),
                   key=lambda o: o["question"])
    assert [(o["correct_spider"], o["correct_bird"]) for o in lines] == [(s, b) for _, _, s, b in CASES]
    chosen = "bird" if metric == "bird" else "spider"
    assert [o["correct"] for o in lines] == [o[f"correct_{chosen}"] for o in lines]
    row = summary["summary"][0]
    assert row["ex_spider"] == round(sum(c[2] for c in CASES) / len(CASES), 4)
    assert row["ex_bird"] == round(sum(c[3] for c in CASES) / len(CASES), 4)
    assert summary["command"].startswith("refinegraph bench spider")


def test_bird_layout_defaults_to_birds_metric(cases, tmp_path):
    data, pool = cases
    items = json.loads((data / "dev.json").read_text())
    (data / "dev.json").write_text(json.dumps([{"db_id": i["db_id"], "question": i["question"], "SQL": i["query"],
                                                "evidence": ""} for i in items]))
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--pool", str(pool), "--systems",
                                      "cand", "--graphs", "sql-greedy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["metric"] == "bird"


def test_unknown_metric_names_the_available_ones(cases, tmp_path):
    data, pool = cases
    result = CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--pool", str(pool), "--systems",
                                      "cand", "--metric", "exact", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "spider, bird" in result.output


def test_a_gold_query_that_fails_is_reported_before_any_run(cases, tmp_path):
    data, pool = cases
    items = json.loads((data / "dev.json").read_text())
    items[2]["query"] = "SELECT nothing FROM nowhere"
    (data / "dev.json").write_text(json.dumps(items))
    result = CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--pool", str(pool), "--systems",
                                      "cand", "--graphs", "sql-greedy", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "question 2 (concert_singer)" in result.output
    assert not (tmp_path / "r" / "questions.jsonl").exists()
