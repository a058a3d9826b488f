"""`refinegraph bench humaneval`: greedy against code-filter, filtered on the docstring's
examples only and scored on the hidden tests, resumable from its output folder."""

import gzip
import json

import pytest
from typer.testing import CliRunner

from refinegraph.bench.humaneval import docstring_tests, load_problems
from refinegraph.cli.app import app
from refinegraph.models.scripted import ScriptedModel
from refinegraph.tools.code.bwrap import find_bwrap

PROMPT = ('def add(a: int, b: int) -> int:\n    """Add two numbers.\n    >>> add(2, 3)\n    5\n'
          '    >>> add(-1, 1)\n    0\n    """\n')
HIDDEN = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(10, 5) == 15\n"


def _problems(tmp_path, count=2):
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps({"task_id": f"T/{i}", "prompt": PROMPT, "test": HIDDEN,
                                     "entry_point": "add"}) + "\n")
    return path


def test_docstring_examples_become_a_check_and_the_hidden_tests_do_not():
    tests, count = docstring_tests(PROMPT, "add")
    assert count == 2
    assert "assert candidate(2, 3) == 5" in tests and "assert candidate(-1, 1) == 0" in tests
    assert "10, 5" not in tests
    assert docstring_tests('def f(x):\n    """No examples."""\n', "f") == ("", 0)
    # an example whose expected output is not an expression is left out, not guessed
    odd = 'def f(x):\n    """\n    >>> f(1)\n    Traceback (most recent call last):\n    ValueError\n    """\n'
    assert docstring_tests(odd, "f") == ("", 0)


def test_a_bad_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": "T/0", "prompt": "x", "test": "y", "entry_point": "f"}\n{"nope": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_problems(path)


def test_the_sample_is_fixed_by_its_seed(tmp_path):
    path = _problems(tmp_path, 10)
    first = [p.index for p in load_problems(path, sample=4, seed=1)]
    assert first == [p.index for p in load_problems(path, sample=4, seed=1)] and len(first) == 4


@pytest.mark.skipif(find_bwrap() is None, reason="HumanEval's programs run only under bubblewrap")
def test_code_filter_beats_greedy_only_through_the_examples_and_resumes(tmp_path, monkeypatch):
    """Greedy's one program is wrong; code-filter's second candidate passes the docstring's
    examples and the hidden tests. A second invocation finds everything done."""
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    right = "```python\ndef add(a, b):\n    return a + b\n```"

    def respond(messages):
        respond.calls += 1
        return wrong if respond.calls % 2 else right
    respond.calls = 0
    monkeypatch.setattr("refinegraph.runs.execute.build_model", lambda name, spec: ScriptedModel(respond, name=name))
    out_dir = tmp_path / "report"
    args = ["bench", "humaneval", "--data", str(_problems(tmp_path)), "-p", "n=2", "--out", str(out_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {(r["question"], r["method"]): r for r in map(json.loads, (out_dir / "questions.jsonl").open())}
    assert len(rows) == 4
    assert not rows[(0, "greedy")]["correct"] and rows[(0, "code-filter")]["correct"]
    assert rows[(0, "code-filter")]["filter_tests"] == 2
    summary = json.loads((out_dir / "summary.json").read_text())
    assert {r["method"]: r["pass_at_1"] for r in summary["summary"]}["code-filter"] == 1.0
    calls = respond.calls
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and respond.calls == calls and "4 done, 0 to go" in again.output
