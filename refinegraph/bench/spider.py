"""`refinegraph bench spider`: execution accuracy of the SQL graphs on Spider or BIRD.

Reads the official layouts: Spider's `dev.json` (db_id, question, query) with
`database/<db_id>/<db_id>.sqlite`, and BIRD's (db_id, question, SQL, evidence,
difficulty) with `dev_databases/` or `database/`. Every method answers every question
under the same per-question token budget. A prediction is scored under both execution
metrics (bench/spider_metric.py): Spider's (bag of rows, columns in any order, the official
script's DISTINCT handling) and BIRD's (set of rows); `correct` is the chosen one, by
default the data's own.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from refinegraph.bench import common as _common
from refinegraph.bench.spider_metric import Metric, correct_both
from refinegraph.budget import Budget
from refinegraph.config import Config
from refinegraph.runner import RunFailed, run, shared_store
from refinegraph.tools.sql import connect


@dataclass
class Question:
    index: int
    db_id: str
    question: str
    gold: str
    db_path: str
    evidence: str = ""
    difficulty: str = ""


def load_questions(data_dir: Path, *, split_file: str = "dev.json", limit: int | None = None) -> list[Question]:
    """Spider's or BIRD's questions with the path of each one's SQLite database."""
    data_dir = Path(data_dir)
    path = data_dir / split_file
    if not path.is_file():
        raise FileNotFoundError(f"no {split_file} in {data_dir} (expected Spider's or BIRD's layout)")
    folders = [data_dir / name for name in ("database", "dev_databases", "databases") if (data_dir / name).is_dir()]
    if not folders:
        raise FileNotFoundError(f"no database/ or dev_databases/ folder in {data_dir}")
    questions = []
    for index, item in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        if limit is not None and len(questions) >= limit:
            break
        db_path = next((f / item["db_id"] / f"{item['db_id']}.sqlite" for f in folders
                        if (f / item["db_id"] / f"{item['db_id']}.sqlite").is_file()), None)
        if db_path is None:
            raise FileNotFoundError(f"no SQLite file for database {item['db_id']!r} under {data_dir}")
        questions.append(Question(index, item["db_id"], item["question"], item.get("query") or item["SQL"],
                                  str(db_path), item.get("evidence", ""), item.get("difficulty", "")))
    return questions


def sample_questions(questions: list[Question], size: int, seed: int) -> list[Question]:
    """`size` questions drawn with `seed`, every database represented: one question of each
    database first (while size allows), the rest in proportion to each database's share, so a
    small sample still covers the whole schema spread and the same seed gives the same set."""
    if size >= len(questions):
        return list(questions)
    rng = random.Random(seed)
    by_db: dict[str, list[Question]] = {}
    for q in questions:
        by_db.setdefault(q.db_id, []).append(q)
    for group in by_db.values():
        rng.shuffle(group)
    dbs = sorted(by_db)
    rng.shuffle(dbs)
    chosen = [by_db[db].pop() for db in dbs[:size]]
    rest = [q for db in sorted(by_db) for q in by_db[db]]
    chosen += rng.sample(rest, size - len(chosen))
    return sorted(chosen, key=lambda q: q.index)


@dataclass
class Outcome:
    question: int
    db_id: str
    method: str
    correct: bool
    sql: str | None
    stop_reason: str
    tokens: int
    calls: int
    seconds: float
    run_id: str
    error: str | None = None
    correct_spider: bool = False
    correct_bird: bool = False
    candidates: int = 0
    failed_first: int = 0
    """Candidates whose first execution failed."""
    repaired: int = 0
    """Of those, the ones a repair round made executable."""


async def answer(question: Question, method: str, config: Config, params: dict[str, Any],
                 budget_tokens: int | None, metric: Metric = "spider") -> Outcome:
    """One method on one question, scored against the gold query's rows."""
    task = {"question": question.question, "db": question.db_path,
            **({"evidence": question.evidence} if question.evidence else {})}
    started = time.perf_counter()
    error = None
    try:
        result = await run(method, task, config=config, params=params, budget=Budget(max_tokens=budget_tokens))
    except RunFailed as exc:
        result, error = exc.result, str(exc.cause)[:300]
    seconds = time.perf_counter() - started
    sql = result.state.get("sql") if not error else None
    db = connect(question.db_path, timeout_s=30.0, max_rows=100_000)
    both = correct_both(db.execute_sync, sql, question.gold)
    return Outcome(question.index, question.db_id, method, both[metric], sql, result.stop_reason,
                   result.usage["total_tokens"], result.model_calls, round(seconds, 3), result.run_id, error,
                   both["spider"], both["bird"], **execution_counts(shared_store(config), result.run_id))


def execution_counts(store: Any, run_id: str) -> dict[str, int]:
    """From a run's trace: its candidates, those whose first execution failed, and of those
    how many a repair round made executable (the last `repair` event answering each)."""
    first: dict[int, dict[str, Any]] = {}
    last_repair: dict[int, dict[str, Any]] = {}
    for event in store.events(run_id, types={"sql_exec", "repair"}):
        if event["type"] == "sql_exec":
            first.setdefault(event["candidate"], event)
        else:
            for candidate in event.get("candidates") or [event["candidate"]]:
                last_repair[candidate] = event
    failed = [c for c, e in first.items() if e.get("error_class")]
    return {"candidates": len(first), "failed_first": len(failed),
            "repaired": sum(1 for c in failed if c in last_repair and not last_repair[c].get("error_class"))}


def summarize(outcomes: list[Outcome], methods: list[str]) -> list[dict[str, Any]]:
    """Per method: execution accuracy ("ex", the chosen metric), "ex_spider" and "ex_bird", mean
    tokens and calls per question, EX per 1k tokens, and the candidates' execution counts."""
    rows = _common.summarize(outcomes, methods, score="ex", shares=("correct_spider", "correct_bird"))
    for row in rows:
        mine = [o for o in outcomes if o.method == row["method"]]
        for name in ("candidates", "failed_first", "repaired"):
            row[name] = sum(getattr(o, name) for o in mine)
    return rows


plot = partial(_common.plot, y="ex", ylabel="execution accuracy (%)")
"""accuracy.png: execution accuracy against mean tokens per question, one point a method."""
write_outcomes = _common.write_outcomes
