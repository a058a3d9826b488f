"""`bench spider` counts, per method, the candidates that failed to execute at first and
how many of them the repair rounds made executable (issue 14's repair figures)."""

import json

from test_bench_resume import spider_folder
from typer.testing import CliRunner

from refinegraph.cli.app import app
from refinegraph.models import ScriptedModel


def test_repair_counts_reach_the_outcomes_and_the_summary(tmp_path, monkeypatch):
    data, out_dir = spider_folder(tmp_path), tmp_path / "report"

    def respond(messages):
        text = messages[-1]["content"]
        if "error" in text.lower() and "SELECT COUNT(*) FROM customers" in text:
            return "```sql\nSELECT COUNT(*) FROM customer\n```"  # the repair
        if "customers" in text:
            return "```sql\nSELECT COUNT(*) FROM customers\n```"  # no such table
        return "```sql\nSELECT COUNT(*) FROM product\n```"

    monkeypatch.setattr("refinegraph.runs.execute.build_model", lambda name, spec: ScriptedModel(respond, name=name))
    result = CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--graphs", "sql-greedy,sql-repair",
                                      "--limit", "2", "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    rows = {(r["question"], r["method"]): r for r in map(json.loads, (out_dir / "questions.jsonl").open())}
    assert (rows[(0, "sql-greedy")]["failed_first"], rows[(0, "sql-greedy")]["repaired"]) == (1, 0)
    assert not rows[(0, "sql-greedy")]["correct"]
    assert (rows[(0, "sql-repair")]["failed_first"], rows[(0, "sql-repair")]["repaired"]) == (1, 1)
    assert rows[(0, "sql-repair")]["correct"]
    assert rows[(1, "sql-repair")]["failed_first"] == 0 and rows[(1, "sql-repair")]["candidates"] == 1
    summary = {r["method"]: r for r in json.loads((out_dir / "summary.json").read_text())["summary"]}
    assert (summary["sql-repair"]["candidates"], summary["sql-repair"]["failed_first"],
            summary["sql-repair"]["repaired"]) == (2, 1, 1)
    assert "sql-repair: 1 of 2 candidates failed to execute at first; repairs made 1 of them executable" \
        in result.output
