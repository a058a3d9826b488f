"""Comparing query results as the benchmarks' official evaluators do, and rendering
results short enough for a prompt.

Two execution metrics (`METRICS`):

- "bird": BIRD's evaluator: right when the set of predicted rows equals the set of gold
  rows; row order, multiplicity and nothing else is ignored.
- "spider": Spider's evaluator (test-suite-sql-eval, `--etype exec`, its defaults):
  both queries are rewritten first (`spider_rewrite`: every DISTINCT keyword dropped,
  "> =" joined, YEAR(CURDATE()) as 2020, and in the prediction the text "value" read as
  "1"); then right when the rows are the same bag (the same list when the gold text
  contains "order by") under some order of the predicted columns.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from decimal import Decimal
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

Metric = Literal["spider", "bird"]
METRICS: tuple[str, ...] = ("spider", "bird")


def _cell(value: Any) -> Any:
    """One spelling per value across engines (PostgreSQL's Decimal, DuckDB's types)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


def normalize_rows(rows: list[tuple]) -> list[tuple]:
    return [tuple(_cell(v) for v in row) for row in rows]


def results_match(predicted: list[tuple], gold: list[tuple], *, ordered: bool = False) -> bool:
    """Execution accuracy: the same set of rows (BIRD), or the same list when `ordered`."""
    p, g = normalize_rows(predicted), normalize_rows(gold)
    return p == g if ordered else set(p) == set(g)


def bird_results_match(predicted: list[tuple], gold: list[tuple]) -> bool:
    """BIRD's execution accuracy: the same set of rows, in any order."""
    return set(normalize_rows(predicted)) == set(normalize_rows(gold))


_CUR_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)


def spider_rewrite(sql: str, *, predicted: bool) -> str:
    """The SQL Spider's evaluator executes in place of `sql` (defaults: DISTINCT dropped).

    Reproduced as the official script does it, quirks included: DISTINCT goes everywhere,
    also inside COUNT(DISTINCT x), and in a prediction every "value" (also inside a name
    such as `value_points`) becomes "1". A text the tokenizer cannot read keeps its DISTINCT.
    """
    if predicted:
        sql = sql.replace("value", "1")
    sql = sql.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")
    try:
        tokens = sqlglot.tokenize(sql, read="sqlite")
    except (TokenError, ParseError):
        tokens = []
    for token in reversed([t for t in tokens if t.token_type == TokenType.DISTINCT]):
        sql = sql[: token.start] + sql[token.end + 1:]
    return _CUR_YEAR.sub("2020", sql)


def spider_orders_rows(gold_sql: str) -> bool:
    """Spider's evaluator: row order counts when the (rewritten) gold text says "order by"."""
    return "order by" in gold_sql.lower()


def _unordered(row: tuple) -> tuple:
    return tuple(sorted(row, key=lambda v: str(v) + str(type(v))))


def spider_results_match(predicted: list[tuple], gold: list[tuple], *, ordered: bool) -> bool:
    """Spider's execution match: the same bag of rows (the same list when `ordered`) after
    some permutation of the predicted columns. Rows are compared as the engine returned
    them (no normalisation), as the official script does."""
    predicted, gold = [tuple(r) for r in predicted], [tuple(r) for r in gold]
    if not predicted and not gold:
        return True
    if len(predicted) != len(gold) or len(predicted[0]) != len(gold[0]):
        return False
    loose_p, loose_g = [_unordered(r) for r in predicted], [_unordered(r) for r in gold]
    if (loose_p != loose_g) if ordered else (set(loose_p) != set(loose_g)):
        return False
    width = len(gold[0])
    gold_columns = [{row[i] for row in gold} for i in range(width)]
    # Predicted column j can stand at gold position i only if all its values occur there.
    options = [[j for j in range(width) if all(row[j] in gold_columns[i] for row in predicted)]
               for i in range(width)]
    gold_bag = None if ordered else Counter(gold)
    for order in itertools.product(*options):
        if len(set(order)) != width:
            continue
        permuted = [tuple(row[j] for j in order) for row in predicted]
        if permuted == gold if ordered else Counter(permuted) == gold_bag:
            return True
    return False


def orders_rows(gold_sql: str, dialect: str = "sqlite") -> bool:
    """Whether the gold query's outermost statement orders its rows (then order counts)."""
    try:
        tree = sqlglot.parse_one(gold_sql, read=dialect)
    except ParseError:
        return False
    return tree is not None and tree.args.get("order") is not None and isinstance(tree, exp.Query)


def result_key(rows: list[tuple]) -> str:
    """A digest of the set of rows: equal keys mean equal results for a vote."""
    distinct = sorted({json.dumps(row, default=str) for row in normalize_rows(rows)})
    return hashlib.sha256("\n".join(distinct).encode()).hexdigest()[:16]


def render_result(columns: list[str], rows: list[tuple], *, max_rows: int = 10, max_chars: int = 1000) -> str:
    """A small text table for prompts: at most `max_rows` rows and `max_chars` characters."""
    lines = [" | ".join(columns)]
    for row in rows[:max_rows]:
        lines.append(" | ".join("NULL" if v is None else str(v) for v in row))
    if len(rows) > max_rows:
        lines.append(f"... ({len(rows)} rows in all)")
    text = "\n".join(lines)
    marker = "\n... (truncated)"
    return text if len(text) <= max_chars else text[: max(0, max_chars - len(marker))] + marker
