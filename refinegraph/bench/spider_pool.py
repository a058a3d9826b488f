"""Execution accuracy of recorded text-to-SQL systems, alone and voting, on Spider.

Reads a pool file (one JSON object per question: db_id, gold, samples{system: [sql]}),
executes every distinct SQL once on the question's database through the safe executor,
and scores as BIRD does. A vote over systems groups their results (tools.sql.vote) with
candidates in the systems' rank order, so ties go to the better-ranked system.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinegraph.tools.sql import ExecResult, connect, orders_rows, vote_on_results
from refinegraph.tools.sql.compare import normalize_rows, result_key


@dataclass
class Scored:
    """One question: its gold result and each system's result, each marked right or wrong."""

    db_id: str
    question: str
    results: dict[str, ExecResult]
    right: dict[str, bool]


def _matcher(gold: ExecResult, ordered: bool):
    gold_key, gold_rows = result_key(gold.rows), normalize_rows(gold.rows)

    def right(result: ExecResult) -> bool:
        if not result.ok:
            return False
        return normalize_rows(result.rows) == gold_rows if ordered else result_key(result.rows) == gold_key
    return right


def score_pool(pool_file: Path, database_dir: Path, *, timeout_s: float = 5.0,
               limit: int | None = None, questions: set[str] | None = None) -> list[Scored]:
    """Every system's result on every question of the pool (or on the `questions` named, or
    the first `limit`), executed once per distinct SQL."""
    databases: dict[str, Any] = {}
    executed: dict[tuple[str, str], ExecResult] = {}

    def execute(db_id: str, sql: str) -> ExecResult:
        if (db_id, sql) not in executed:
            if db_id not in databases:
                databases[db_id] = connect(database_dir / db_id / f"{db_id}.sqlite", timeout_s=timeout_s,
                                           max_rows=100_000)
            executed[(db_id, sql)] = databases[db_id].execute_sync(sql)
        return executed[(db_id, sql)]

    scored = []
    with open(pool_file, encoding="utf-8") as lines:
        for line in lines:
            if limit is not None and len(scored) >= limit:
                break
            entry = json.loads(line)
            if questions is not None and entry["question"] not in questions:
                continue
            gold = execute(entry["db_id"], entry["gold"])
            right = _matcher(gold, orders_rows(entry["gold"]))
            results = {system: execute(entry["db_id"], sqls[0]) for system, sqls in entry["samples"].items() if sqls}
            scored.append(Scored(entry["db_id"], entry["question"], results,
                                 {s: right(r) for s, r in results.items()}))
    return scored


def system_accuracy(scored: list[Scored]) -> dict[str, float]:
    """Share of all questions each system got right (a missing prediction counts wrong)."""
    right: dict[str, int] = defaultdict(int)
    for question in scored:
        for system, ok in question.right.items():
            right[system] += ok
    return {system: count / len(scored) for system, count in right.items()}


def vote_accuracy(scored: list[Scored], systems: list[str]) -> float:
    """Accuracy of an execution-result vote over `systems` (in rank order) on each question."""
    right = 0
    for question in scored:
        voters = [s for s in systems if s in question.results]
        vote = vote_on_results([question.results[s] for s in voters])
        if vote.winner is not None:
            right += question.right[voters[vote.winner.members[0]]]
    return right / len(scored)
