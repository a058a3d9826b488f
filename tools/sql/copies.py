"""Copies of a SQLite database on DuckDB and PostgreSQL, to run the same questions there.

    tables = read_sqlite_tables(Path("concert_singer.sqlite"))
    build_duckdb(Path("concert_singer.sqlite"), Path("concert_singer.duckdb"), tables=tables)
    schema = unique_schema("concert")                     # a PostgreSQL schema of its own
    build_pg_schema(dsn, schema, Path("concert_singer.sqlite"), tables=tables)
    db = connect(pg_schema_url(dsn, schema))              # then drop_pg_schema(dsn, schema)
    to_postgres(gold_sql, text_columns(tables))           # a SQLite query for the copy

Types are carried over portably (integers, doubles, text); keys and foreign keys are kept,
tables are created referenced-first. PostgreSQL's copy lower-cases every identifier, as
PostgreSQL folds unquoted names, so the SQL written for SQLite reads the copy unchanged
unless it quotes mixed-case names.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import sqlglot
from sqlglot import exp


@dataclass
class SourceTable:
    """One table of the source database, with what a copy needs."""

    name: str
    columns: list[tuple[str, str]]  # (name, portable type: bigint | double | text)
    primary_key: list[str]
    foreign_keys: list[tuple[str, str, str]]  # (column, referenced table, referenced column)
    rows: list[tuple] = field(default_factory=list)


def _portable_type(declared: str, values: list) -> str:
    """INTEGER -> bigint, REAL/FLOAT/DOUBLE/NUMERIC -> double, anything else text; a column
    whose stored values do not fit its declared type (SQLite allows that) falls back to text."""
    declared = declared.upper()
    present = [v for v in values if v is not None]
    if "INT" in declared and all(isinstance(v, int) for v in present):
        return "bigint"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")) \
            and all(isinstance(v, (int, float)) for v in present):
        return "double"
    return "text"


def read_sqlite_tables(path: Path) -> list[SourceTable]:
    """Every table of a SQLite file with keys and rows, referenced tables first (opened
    read-only: the source is never changed)."""
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        tables = {}
        for name in names:
            info = conn.execute(f'PRAGMA table_info("{name}")').fetchall()
            rows = conn.execute(f'SELECT * FROM "{name}"').fetchall()
            columns = [(col[1], _portable_type(col[2] or "", [row[i] for row in rows]))
                       for i, col in enumerate(info)]
            pk = [col[1] for col in sorted(info, key=lambda c: c[5]) if col[5]]
            fks = [(fk[3], fk[2], fk[4]) for fk in conn.execute(f'PRAGMA foreign_key_list("{name}")')]
            tables[name] = SourceTable(name, columns, pk, fks, rows)
    finally:
        conn.close()
    ordered: list[SourceTable] = []

    def visit(table: SourceTable) -> None:
        if table in ordered:
            return
        for _, ref, _ in table.foreign_keys:
            if ref in tables and tables[ref] is not table:
                visit(tables[ref])
        ordered.append(table)

    for table in tables.values():
        visit(table)
    return ordered


_TYPES = {"duckdb": {"bigint": "BIGINT", "double": "DOUBLE", "text": "VARCHAR"},
          "postgres": {"bigint": "bigint", "double": "double precision", "text": "text"}}


def create_table_sql(table: SourceTable, engine: Literal["duckdb", "postgres"], *, lower: bool = False) -> str:
    """The CREATE TABLE of `table` for `engine` (identifiers lower-cased with `lower`)."""
    def q(name: str) -> str:
        return '"' + (name.lower() if lower else name) + '"'

    parts = [f"{q(name)} {_TYPES[engine][kind]}" for name, kind in table.columns]
    if table.primary_key:
        parts.append(f"PRIMARY KEY ({', '.join(q(c) for c in table.primary_key)})")
    parts += [f"FOREIGN KEY ({q(col)}) REFERENCES {q(ref)} ({q(ref_col)})"
              for col, ref, ref_col in table.foreign_keys]
    return f"CREATE TABLE {q(table.name)} ({', '.join(parts)})"


def _tables(sqlite_path: Path, tables: list[SourceTable] | None) -> list[SourceTable]:
    """The tables a caller already read, else the SQLite file's."""
    return read_sqlite_tables(sqlite_path) if tables is None else tables


def _row_for(table: SourceTable, row: tuple) -> tuple:
    return tuple(str(v) if v is not None and kind == "text" else v for v, (_, kind) in zip(row, table.columns))


def build_duckdb(sqlite_path: Path, duckdb_path: Path, *, tables: list[SourceTable] | None = None) -> Path:
    """A DuckDB file with the tables, keys and rows of a SQLite database (`tables`: what
    read_sqlite_tables already read from it, so that building several copies reads it once)."""
    import duckdb

    with duckdb.connect(str(duckdb_path)) as conn:
        for table in _tables(sqlite_path, tables):
            conn.execute(create_table_sql(table, "duckdb"))
            if table.rows:
                marks = ", ".join("?" for _ in table.columns)
                conn.executemany(f'INSERT INTO "{table.name}" VALUES ({marks})',
                                 [_row_for(table, r) for r in table.rows])
    return duckdb_path


def build_pg_schema(dsn: str, schema: str, sqlite_path: Path, *, tables: list[SourceTable] | None = None) -> None:
    """A PostgreSQL schema of its own holding a SQLite database's tables (names lower-cased,
    as PostgreSQL folds unquoted identifiers), keys and rows (`tables`: as for build_duckdb)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f"SET search_path TO \"{schema}\"")
        for table in _tables(sqlite_path, tables):
            conn.execute(create_table_sql(table, "postgres", lower=True))
            if table.rows:
                marks = ", ".join("%s" for _ in table.columns)
                with conn.cursor() as cur:
                    cur.executemany(f'INSERT INTO "{table.name.lower()}" VALUES ({marks})',
                                    [_row_for(table, r) for r in table.rows])


def drop_pg_schema(dsn: str, schema: str) -> None:
    """Drop a schema that build_pg_schema made, with everything in it."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def unique_schema(prefix: str) -> str:
    """A schema name no other copy uses (copies made at the same time do not collide)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def pg_schema_url(dsn: str, schema: str) -> str:
    """The URL `connect` reads one schema of the DSN's database by."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}schema={schema}"


def text_columns(tables: Iterable[SourceTable]) -> set[str]:
    """Lower-cased names of the columns stored as text in every table that has them."""
    kinds: dict[str, set[str]] = {}
    for table in tables:
        for name, kind in table.columns:
            kinds.setdefault(name.lower(), set()).add(kind)
    return {name for name, found in kinds.items() if found == {"text"}}


def to_postgres(sql: str, text_cols: set[str] = frozenset()) -> str:
    """A SQLite query (Spider's gold SQL, MySQL-style back quotes allowed) through sqlglot
    for PostgreSQL, with identifiers lower-cased to match the lower-cased copy.

    One rule of SQLite's is spelled out: a number compared with a TEXT column is compared as
    text (`year = 2014` means `year = '2014'`), where PostgreSQL has no text = integer.
    """
    tree = sqlglot.parse_one(sql, read="sqlite")
    for ident in tree.find_all(exp.Identifier):
        ident.set("this", ident.this.lower())

    def is_text_column(node: exp.Expression) -> bool:
        return isinstance(node, exp.Column) and node.name.lower() in text_cols

    def as_text(node: exp.Expression) -> None:
        if isinstance(node, exp.Literal) and not node.is_string:
            node.replace(exp.Literal.string(node.this))

    for node in list(tree.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
        if is_text_column(node.left):
            as_text(node.right)
        elif is_text_column(node.right):
            as_text(node.left)
    for node in list(tree.find_all(exp.In, exp.Between)):
        if is_text_column(node.this):
            for value in node.args.get("expressions") or [node.args.get("low"), node.args.get("high")]:
                if value is not None:
                    as_text(value)
    return tree.sql(dialect="postgres")
