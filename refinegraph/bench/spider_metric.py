"""Scoring one predicted SQL against the gold query on its database, under Spider's or
BIRD's execution metric (see tools.sql.compare for what each compares).

The metric a data folder gets by default is its own: Spider's layout (`query` in dev.json)
is scored with Spider's metric, BIRD's (`SQL` with `evidence`) with BIRD's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refinegraph.tools.sql import ExecResult
from refinegraph.tools.sql.compare import (
    METRICS,
    Metric,
    bird_results_match,
    spider_orders_rows,
    spider_results_match,
    spider_rewrite,
)


def layout_metric(data_dir: Path, split_file: str = "dev.json") -> Metric:
    """The data's own metric: "bird" for BIRD's layout (items with `SQL`), else "spider"."""
    path = Path(data_dir) / split_file
    if not path.is_file():
        raise FileNotFoundError(f"no {split_file} in {data_dir} (expected Spider's or BIRD's layout)")
    items = json.loads(path.read_text(encoding="utf-8"))
    first = items[0] if items else {}
    return "bird" if "SQL" in first and "query" not in first else "spider"


def check_metric(metric: str) -> Metric:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; available: {', '.join(METRICS)}")
    return metric  # type: ignore[return-value]


def correct_under(metric: Metric, execute: Any, predicted_sql: str, gold_sql: str) -> bool:
    """Whether `predicted_sql` is right under `metric`; `execute(sql) -> ExecResult` runs SQL
    on the question's database (callers cache it: the same text runs once)."""
    if metric == "bird":
        predicted, gold = execute(predicted_sql), execute(gold_sql)
        _check_gold(gold)
        return predicted.ok and bird_results_match(predicted.rows, gold.rows)
    gold_sql = spider_rewrite(gold_sql, predicted=False)
    predicted, gold = execute(spider_rewrite(predicted_sql, predicted=True)), execute(gold_sql)
    _check_gold(gold)
    return predicted.ok and spider_results_match(predicted.rows, gold.rows, ordered=spider_orders_rows(gold_sql))


def correct_both(execute: Any, predicted_sql: str | None, gold_sql: str) -> dict[str, bool]:
    """{"spider": ..., "bird": ...}: both metrics on one prediction (no SQL is wrong)."""
    return {m: bool(predicted_sql) and correct_under(m, execute, predicted_sql, gold_sql)  # type: ignore[arg-type]
            for m in METRICS}


class GoldFailed(RuntimeError):
    """The gold query did not execute: nothing can be scored against it."""


def _check_gold(gold: ExecResult) -> None:
    if not gold.ok:
        raise GoldFailed(f"the gold query failed ({gold.error_class}: {gold.error}): {gold.sql[:200]}")
    if gold.truncated:
        raise GoldFailed(f"the gold query returned more rows than the executor keeps: {gold.sql[:200]}")


def check_golds(questions: list[Any], metric: Metric) -> None:
    """Every gold query executes (as the metric rewrites it) before any method runs: a
    failing gold is a data error, reported with its question, and no run is spent."""
    from refinegraph.tools.sql import connect

    failed = []
    for question in questions:
        db = connect(question.db_path, timeout_s=30.0, max_rows=100_000)
        sql = spider_rewrite(question.gold, predicted=False) if metric == "spider" else question.gold
        result = db.execute_sync(sql)
        if not result.ok or result.truncated:
            failed.append(f"question {question.index} ({question.db_id}): "
                          f"{result.error_class or 'too many rows'}: {sql[:120]}")
    if failed:
        raise GoldFailed(f"{len(failed)} gold queries do not execute under the {metric} metric: "
                         + "; ".join(failed[:5]))
