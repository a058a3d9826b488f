"""`bench gsm8k` and `bench spider` continue a stopped run from their output folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph.bench.gsm8k import Outcome
from refinegraph.bench.journal import PROGRESS, Journal, JournalMismatch
from refinegraph.cli.app import app
from refinegraph.data import sample_db
from refinegraph.models import ScriptedModel

QUESTIONS = [("Ducks lay 16 eggs; Janet eats 3 and bakes 4; she sells the rest at $2. Dollars?", "18"),
             ("A robe takes 2 bolts of blue and half that of white. Total bolts?", "3"),
             ("Stop here: the machine is switched off on this question.", "5"),
             ("Tom has 2 apples and buys 3 more. How many apples?", "5")]


def gsm8k_file(tmp_path: Path) -> Path:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in QUESTIONS))
    return path


class Asked:
    """A scripted model that records the questions it was asked and stops the benchmark once."""

    def __init__(self, stop_on: str | None):
        self.stop_on, self.questions = stop_on, []

    def __call__(self, messages):
        text = messages[-1]["content"]
        self.questions.append(text)
        if self.stop_on and self.stop_on in text:
            raise KeyboardInterrupt  # what Ctrl-C or a killed session does to the run
        return "The answer is 5."


def gsm8k(tmp_path, monkeypatch, asked: Asked, out_dir: Path, graphs: str = "greedy,self-consistency"):
    monkeypatch.setattr("refinegraph.runs.execute.build_model", lambda name, spec: ScriptedModel(asked, name=name))
    return CliRunner().invoke(app, ["bench", "gsm8k", "--data", str(gsm8k_file(tmp_path)), "--graphs", graphs,
                                    "-p", "n=2", "--out", str(out_dir)])


def test_a_stopped_gsm8k_run_continues_where_it_was(tmp_path, monkeypatch):
    out_dir = tmp_path / "report"
    first = Asked(stop_on="Stop here")
    stopped = gsm8k(tmp_path, monkeypatch, first, out_dir)
    assert stopped.exit_code == 130
    # Ctrl-C says what was kept and how to go on, not a bare traceback or nothing.
    assert "interrupted: 4 of 8 jobs recorded" in stopped.output
    # and reports the questions every method finished, each method on the same ones
    partial = json.loads((out_dir / "stopped-summary.json").read_text())
    assert partial["stopped"] == {"questions_by_every_method": 2, "questions": 4}
    assert "stopped: 2 of 4 done by every method" in partial["title"]
    assert [(s["method"], s["questions"]) for s in partial["summary"]] == [("greedy", 2), ("self-consistency", 2)]
    assert "the same command continues" in stopped.output
    done = [json.loads(line) for line in (out_dir / PROGRESS).read_text().splitlines()]
    assert {(d["question"], d["method"]) for d in done} == {(0, "greedy"), (0, "self-consistency"),
                                                           (1, "greedy"), (1, "self-consistency")}
    # A kill mid-write leaves a cut line: it is ignored and that job runs again.
    with open(out_dir / PROGRESS, "a") as handle:
        handle.write('{"question": 3, "method": "gre')

    second = Asked(stop_on=None)
    resumed = gsm8k(tmp_path, monkeypatch, second, out_dir)
    assert resumed.exit_code == 0, resumed.output
    assert "4 done, 4 to go" in resumed.output
    assert not any("Ducks" in q or "robe" in q for q in second.questions), "finished questions are not asked again"
    rows = [json.loads(line) for line in (out_dir / "questions.jsonl").read_text().splitlines()]
    assert [(r["question"], r["method"]) for r in rows] == [
        (i, m) for i in range(4) for m in ("greedy", "self-consistency")]
    by = {(r["question"], r["method"]): r for r in rows}
    first_runs = {(d["question"], d["method"]): d["run_id"] for d in done}
    assert by[(0, "greedy")]["run_id"] == first_runs[(0, "greedy")], "a finished outcome is kept, not redone"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert [s["questions"] for s in summary["summary"]] == [4, 4] and "stopped" not in summary
    assert not list(out_dir.glob("stopped-*")), "the whole report replaces the stopped one"


class StopOnSecondSight(Asked):
    """Stops the benchmark the second time it is asked a question: self-consistency's turn."""

    def __call__(self, messages):
        text = messages[-1]["content"]
        if self.stop_on in text and any(self.stop_on in q for q in self.questions):
            raise KeyboardInterrupt
        self.questions.append(text)
        return "The answer is 5."


def test_a_stopped_report_leaves_out_questions_a_method_has_not_finished(tmp_path, monkeypatch):
    """Greedy has finished the robe question, self-consistency has not: the report compares
    the methods on the duck question only."""
    out_dir = tmp_path / "report"
    stopped = gsm8k(tmp_path, monkeypatch, StopOnSecondSight(stop_on="A robe"), out_dir)
    assert stopped.exit_code == 130
    done = {(d["question"], d["method"]) for d in map(json.loads, (out_dir / PROGRESS).read_text().splitlines())}
    assert (1, "greedy") in done and (1, "self-consistency") not in done
    partial = json.loads((out_dir / "stopped-summary.json").read_text())
    assert [(s["method"], s["questions"]) for s in partial["summary"]] == [("greedy", 1), ("self-consistency", 1)]
    rows = [json.loads(line) for line in (out_dir / "stopped-questions.jsonl").read_text().splitlines()]
    assert {r["question"] for r in rows} == {0}


def test_a_run_stopped_before_every_method_finished_a_question_keeps_the_last_report(tmp_path, monkeypatch):
    """Adding a method to a finished folder and stopping at once must not replace the report."""
    out_dir = tmp_path / "report"
    assert gsm8k(tmp_path, monkeypatch, Asked(stop_on=None), out_dir, graphs="greedy").exit_code == 0
    before = (out_dir / "summary.json").read_text()
    stopped = gsm8k(tmp_path, monkeypatch, Asked(stop_on="Ducks"), out_dir)
    assert stopped.exit_code == 130 and "left as it was" in stopped.output
    assert (out_dir / "summary.json").read_text() == before
    # stopped after both methods finished a question: a report of its own, beside the last whole one
    stopped = gsm8k(tmp_path, monkeypatch, Asked(stop_on="A robe"), out_dir)
    assert stopped.exit_code == 130 and "stopped-summary.json" in stopped.output
    assert (out_dir / "summary.json").read_text() == before
    assert json.loads((out_dir / "stopped-summary.json").read_text())["stopped"]["questions_by_every_method"] == 1


def test_other_settings_are_refused_rather_than_mixed(tmp_path, monkeypatch):
    """A method may join a folder later; a method already there with other params may not."""
    out_dir = tmp_path / "report"
    assert gsm8k(tmp_path, monkeypatch, Asked(None), out_dir, graphs="greedy").exit_code == 0
    asked = Asked(None)
    grown = gsm8k(tmp_path, monkeypatch, asked, out_dir, graphs="greedy,self-consistency")
    assert grown.exit_code == 0 and "4 done, 4 to go" in grown.output
    assert gsm8k(tmp_path, monkeypatch, Asked(None), out_dir, graphs="greedy").exit_code == 0
    recorded = json.loads((out_dir / "progress-settings.json").read_text())["methods"]
    assert sorted(recorded) == ["greedy", "self-consistency"]  # a run of fewer methods forgets none
    monkeypatch.setattr("refinegraph.runs.execute.build_model",
                        lambda name, spec: ScriptedModel(Asked(None), name=name))
    changed = CliRunner().invoke(app, ["bench", "gsm8k", "--data", str(gsm8k_file(tmp_path)), "--graphs",
                                       "self-consistency", "-p", "n=3", "--out", str(out_dir)])
    assert changed.exit_code == 2 and "other settings (methods.self-consistency" in changed.output


def test_journal_keeps_the_first_outcome_of_a_job(tmp_path):
    journal = Journal(tmp_path, {"benchmark": "x"}, Outcome)
    first = Outcome(0, "greedy", "5", "5", True, 10, 1, 0.1, "run-a", "done")
    journal.record(first)
    journal.record(Outcome(0, "greedy", "6", "5", False, 10, 1, 0.1, "run-b", "done"))
    assert Journal(tmp_path, {"benchmark": "x"}, Outcome).done == [first]
    with pytest.raises(JournalMismatch, match="benchmark"):
        Journal(tmp_path, {"benchmark": "y"}, Outcome)


def spider_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "spider"
    (folder / "database" / "shop").mkdir(parents=True)
    shutil.copy(sample_db(), folder / "database" / "shop" / "shop.sqlite")
    items = [{"db_id": "shop", "question": q, "query": sql} for q, sql in [
        ("How many customers are there?", "SELECT COUNT(*) FROM customer"),
        ("How many products are there?", "SELECT COUNT(*) FROM product"),
        ("Stop here: how many orders are there?", "SELECT COUNT(*) FROM orders"),
        ("How many order lines are there?", "SELECT COUNT(*) FROM order_item")]]
    (folder / "dev.json").write_text(json.dumps(items))
    return folder


def test_a_stopped_spider_run_continues_where_it_was(tmp_path, monkeypatch):
    data, out_dir = spider_folder(tmp_path), tmp_path / "report"

    def model(stop: bool):
        def respond(messages):
            text = messages[-1]["content"]
            if stop and "Stop here" in text:
                raise KeyboardInterrupt
            table = next(t for t in ("order lines", "customers", "products", "orders") if t in text)
            name = {"customers": "customer", "products": "product", "orders": "orders",
                    "order lines": "order_item"}[table]
            return f"```sql\nSELECT COUNT(*) FROM {name}\n```"
        return respond

    def bench(stop: bool):
        monkeypatch.setattr("refinegraph.runs.execute.build_model",
                            lambda name, spec: ScriptedModel(model(stop), name=name))
        return CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--graphs", "sql-greedy",
                                        "--out", str(out_dir)])

    stopped = bench(stop=True)
    assert stopped.exit_code == 130 and "interrupted: 2 of 4 jobs recorded" in stopped.output
    assert len((out_dir / PROGRESS).read_text().splitlines()) == 2
    partial = json.loads((out_dir / "stopped-summary.json").read_text())
    assert partial["stopped"]["questions_by_every_method"] == 2 and partial["summary"][0]["ex"] == 1.0
    resumed = bench(stop=False)
    assert resumed.exit_code == 0, resumed.output
    assert "2 done, 2 to go" in resumed.output
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["summary"][0]["questions"] == 4 and summary["summary"][0]["ex"] == 1.0


def test_a_spider_run_takes_more_methods_into_the_same_folder(tmp_path, monkeypatch):
    """A long live benchmark grows one method at a time: adding sql-repair to a finished
    sql-greedy folder runs only sql-repair's jobs and reports both."""
    data, out_dir = spider_folder(tmp_path), tmp_path / "report"
    asked: list[str] = []

    def respond(messages):
        asked.append(messages[-1]["content"])
        return "```sql\nSELECT COUNT(*) FROM customer\n```"

    monkeypatch.setattr("refinegraph.runs.execute.build_model", lambda name, spec: ScriptedModel(respond, name=name))

    def bench(graphs: str):
        return CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--graphs", graphs,
                                        "--sample", "3", "--seed", "1", "--out", str(out_dir)])

    assert bench("sql-greedy").exit_code == 0
    calls = len(asked)
    grown = bench("sql-greedy,sql-repair")
    assert grown.exit_code == 0, grown.output
    assert "3 done, 3 to go" in grown.output and len(asked) > calls
    summary = json.loads((out_dir / "summary.json").read_text())
    assert [row["method"] for row in summary["summary"]] == ["sql-greedy", "sql-repair"]
    assert [row["questions"] for row in summary["summary"]] == [3, 3]
    other_sample = CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--graphs", "sql-greedy",
                                            "--sample", "3", "--seed", "2", "--out", str(out_dir)])
    assert other_sample.exit_code == 2 and "other settings (questions" in other_sample.output


def test_a_folder_begun_on_one_default_local_model_refuses_another(tmp_path, monkeypatch):
    """The local backend's default depends on what is installed: the journal records the
    model it resolved to, so a machine without Qwen's parts cannot finish a Qwen folder on SmolLM2."""
    data, out_dir = spider_folder(tmp_path), tmp_path / "report"
    monkeypatch.setattr("refinegraph.runs.execute.build_model", lambda name, spec: ScriptedModel(
        lambda messages: "```sql\nSELECT COUNT(*) FROM customer\n```", name=name))

    def bench(local_model: str):
        monkeypatch.setenv("REFINEGRAPH_LOCAL_MODEL", local_model)
        return CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--graphs", "sql-greedy",
                                        "--limit", "1", "--out", str(out_dir)])

    assert bench("qwen2.5-coder-1.5b").exit_code == 0
    settings = json.loads((out_dir / "progress-settings.json").read_text())
    assert settings["model_spec"]["model"] == "qwen2.5-coder-1.5b"
    other = bench("smollm2-135m")
    assert other.exit_code == 2 and "other settings (model_spec" in other.output


def test_a_folder_recorded_before_the_model_settings_were_split_by_backend_resumes(tmp_path, monkeypatch):
    """Model settings that the backend's settings no longer have (written when one settings
    class served every backend) are not a difference; a changed value of a kept one still is."""
    data, out_dir = spider_folder(tmp_path), tmp_path / "report"
    monkeypatch.setattr("refinegraph.runs.execute.build_model", lambda name, spec: ScriptedModel(
        lambda messages: "```sql\nSELECT COUNT(*) FROM customer\n```", name=name))
    monkeypatch.setenv("REFINEGRAPH_LOCAL_MODEL", "qwen2.5-coder-1.5b")

    def bench():
        return CliRunner().invoke(app, ["bench", "spider", "--data", str(data), "--graphs", "sql-greedy",
                                        "--limit", "2", "--out", str(out_dir)])

    assert bench().exit_code == 0
    progress = out_dir / PROGRESS
    progress.write_text(progress.read_text().splitlines(keepends=True)[0])
    settings_path = out_dir / "progress-settings.json"
    settings = json.loads(settings_path.read_text())
    settings["model_spec"].update({"count_tokens": "auto", "pool_file": None, "langchain_kwargs": {}})
    settings_path.write_text(json.dumps(settings))
    resumed = bench()
    assert resumed.exit_code == 0, resumed.output
    assert len(progress.read_text().splitlines()) == 2
    settings = json.loads(settings_path.read_text())
    settings["model_spec"]["timeout_s"] = 1.0
    settings_path.write_text(json.dumps(settings))
    assert "other settings (model_spec" in bench().output
