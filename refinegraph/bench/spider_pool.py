"""Execution accuracy of recorded text-to-SQL systems, alone and voting, on Spider.

Reads a pool file (one JSON object per question: db_id, gold, samples{system: [sql]}),
executes every distinct SQL once on the question's database through the safe executor,
and scores under Spider's and BIRD's execution metrics (bench/spider_metric.py). A vote
over systems groups their results (tools.sql.vote) with candidates
in the systems' rank order, so ties go to the better-ranked system.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinegraph.bench.spider_metric import Metric, correct_under
from refinegraph.tools.sql import ExecResult, connect, vote_on_results
from refinegraph.tools.sql.compare import METRICS


@dataclass
class Scored:
    """One question: each system's result (what a vote groups) and whether it is right
    under the metric scored (`right`) and under each metric (`right_by`)."""

    db_id: str
    question: str
    results: dict[str, ExecResult]
    right: dict[str, bool]
    right_by: dict[str, dict[str, bool]] = field(default_factory=dict)


def score_pool(pool_file: Path, database_dir: Path, *, timeout_s: float = 5.0, limit: int | None = None,
               questions: set[str] | None = None, metric: Metric = "spider") -> list[Scored]:
    """Every system's result on every question of the pool (or on the `questions` named, or
    the first `limit`), each distinct SQL executed once, scored under both metrics."""
    databases: dict[str, Any] = {}
    executed: dict[tuple[str, str], ExecResult] = {}

    def executor(db_id: str):
        def execute(sql: str) -> ExecResult:
            if (db_id, sql) not in executed:
                if db_id not in databases:
                    databases[db_id] = connect(database_dir / db_id / f"{db_id}.sqlite", timeout_s=timeout_s,
                                               max_rows=100_000)
                executed[(db_id, sql)] = databases[db_id].execute_sync(sql)
            return executed[(db_id, sql)]
        return execute

    scored = []
    with open(pool_file, encoding="utf-8") as lines:
        for line in lines:
            if limit is not None and len(scored) >= limit:
                break
            if not line.strip():
                continue
            entry = json.loads(line)
            if questions is not None and entry["question"] not in questions:
                continue
            execute = executor(entry["db_id"])
            predictions = {system: sqls[0] for system, sqls in entry["samples"].items() if sqls}
            results = {system: execute(sql) for system, sql in predictions.items()}
            right_by = {m: {s: correct_under(m, execute, sql, entry["gold"]) for s, sql in predictions.items()}
                        for m in METRICS}
            scored.append(Scored(entry["db_id"], entry["question"], results, right_by[metric], right_by))
    return scored


def system_accuracy(scored: list[Scored]) -> dict[str, float]:
    """Share of all questions each system got right (a missing prediction counts wrong)."""
    right: dict[str, int] = defaultdict(int)
    for question in scored:
        for system, ok in question.right.items():
            right[system] += ok
    return {system: count / len(scored) for system, count in right.items()}


def vote_accuracy(scored: list[Scored], systems: list[str], weights: dict[str, float] | None = None) -> float:
    """Accuracy of an execution-result vote over `systems` (in rank order) on each question.

    With `weights` (per system), each group's votes are its members' weights summed (ties:
    the group whose first member ranks higher); without, one vote each."""
    right = 0
    for question in scored:
        voters = [s for s in systems if s in question.results]
        vote = vote_on_results([question.results[s] for s in voters])
        if not vote.groups:
            continue
        if weights is None:
            winner = vote.groups[0]
        else:
            winner = max(vote.groups, key=lambda g: (sum(weights.get(voters[i], 0.0) for i in g.members),
                                                     -g.members[0]))
        right += question.right[voters[winner.members[0]]]
    return right / len(scored) if scored else 0.0


def log_odds_weights(accuracy: dict[str, float], questions: int) -> dict[str, float]:
    """Each system's vote weight, log(p / (1 - p)) of its accuracy p on the selection
    questions (add-one smoothed so that 0% and 100% stay finite): the weights under which
    a weighted vote of independent voters is the most likely answer."""
    weights = {}
    for system, share in accuracy.items():
        p = (share * questions + 1) / (questions + 2)
        weights[system] = max(0.0, math.log(p / (1 - p)))
    return weights


def pool_sources(pool_file: Path) -> set[str]:
    """Every system (source) named anywhere in the pool."""
    names: set[str] = set()
    with open(pool_file, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                names.update(json.loads(line)["samples"])
    return names
