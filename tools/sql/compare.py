"""Comparing query results as BIRD does (set of rows), with order where the gold query
orders its rows, and rendering results short enough for a prompt."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError


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
