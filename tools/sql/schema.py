"""Schemas for prompts: CREATE TABLE statements with primary and foreign keys, and a few
sample values per column, optionally pruned to given tables and columns."""

from __future__ import annotations

from dataclasses import dataclass, field

from refinegraph.tools.sql.engines import Database


@dataclass
class Column:
    name: str
    type: str
    primary_key: bool = False


@dataclass
class Table:
    name: str
    columns: list[Column] = field(default_factory=list)
    foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)  # (column, table, column)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_tables(db: Database) -> list[Table]:
    names = [r[0] for r in db.introspect(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    tables = []
    for name in names:
        info = db.introspect(f"PRAGMA table_info({_quote(name)})")
        fks = db.introspect(f"PRAGMA foreign_key_list({_quote(name)})")
        tables.append(Table(name, [Column(r[1], r[2] or "", bool(r[5])) for r in info],
                            [(r[3], r[2], r[4] or "") for r in fks]))
    return tables


_CATALOG_KEYS = (
    "SELECT tc.table_name, kcu.column_name, tc.constraint_type, ref.table_name, ref.column_name "
    "FROM information_schema.table_constraints tc "
    "JOIN information_schema.key_column_usage kcu ON tc.constraint_name = kcu.constraint_name "
    "AND tc.constraint_schema = kcu.constraint_schema AND tc.table_name = kcu.table_name "
    "LEFT JOIN information_schema.referential_constraints rc ON tc.constraint_type = 'FOREIGN KEY' "
    "AND rc.constraint_name = tc.constraint_name AND rc.constraint_schema = tc.constraint_schema "
    "LEFT JOIN information_schema.key_column_usage ref ON ref.constraint_name = rc.unique_constraint_name "
    "AND ref.constraint_schema = rc.unique_constraint_schema "
    "AND ref.ordinal_position = kcu.position_in_unique_constraint "
    "WHERE tc.table_schema = ? AND tc.constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY') "
    "ORDER BY tc.table_name, tc.constraint_name, kcu.ordinal_position")

# PostgreSQL's information_schema shows a table's constraints only to roles with more than
# SELECT on it, so a read-only role (`refinegraph sql grant`) would see no keys: read pg_constraint.
_PG_KEYS = (
    "SELECT c.relname, a.attname, CASE con.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'FOREIGN KEY' END, "
    "rc.relname, ra.attname "
    "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN LATERAL unnest(con.conkey, COALESCE(con.confkey, con.conkey)) "
    "WITH ORDINALITY AS k(attnum, refnum, ord) "
    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
    "LEFT JOIN pg_class rc ON rc.oid = con.confrelid "
    "LEFT JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = k.refnum "
    "WHERE n.nspname = ? AND con.contype IN ('p', 'f') ORDER BY c.relname, con.conname, k.ord")


def _catalog_tables(db: Database) -> list[Table]:
    """PostgreSQL and DuckDB, through information_schema."""
    schema = db.schema or ("public" if db.engine == "postgres" else "main")
    rows = db.introspect(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? ORDER BY table_name, ordinal_position", (schema,))
    tables: dict[str, Table] = {}
    for table, column, type_ in rows:
        tables.setdefault(table, Table(table)).columns.append(Column(column, type_))
    # The referenced column of a foreign key is the column of the referenced unique key at the
    # same position (referential_constraints), matched within one schema: constraint names
    # repeat across schemas, and DuckDB's constraint_column_usage lists a foreign key's own
    # columns rather than the referenced ones.
    keys = db.introspect(_PG_KEYS if db.engine == "postgres" else _CATALOG_KEYS, (schema,))
    for table, column, kind, ref_table, ref_column in keys:
        if table not in tables:
            continue
        if kind == "PRIMARY KEY":
            for col in tables[table].columns:
                col.primary_key = col.primary_key or col.name == column
        elif ref_table:
            tables[table].foreign_keys.append((column, ref_table, ref_column or ""))
    return [tables[k] for k in sorted(tables)]


def _samples(db: Database, table: str, column: str, k: int) -> list[str]:
    rows = db.introspect(f"SELECT DISTINCT {_quote(column)} FROM {_quote(table)} "
                         f"WHERE {_quote(column)} IS NOT NULL LIMIT {int(k)}")
    return [repr(r[0]) if isinstance(r[0], str) else str(r[0]) for r in rows]


def list_tables(db: Database) -> list[Table]:
    """Every table of the database with its columns and keys, as the prompts describe them."""
    return _sqlite_tables(db) if db.engine == "sqlite" else _catalog_tables(db)


def query_tables_hint(db: Database, sql: str) -> str:
    """One line per table the query names: its alias, its name and its real columns, e.g.
    `T2 = cars_data: Id, MPG, Weight`. A failed query's tables in focus help a small model
    see that `T2.MakeId` is not there; "" when the query does not parse or names no known table."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    try:
        tree = sqlglot.parse_one(sql, read=db.dialect)
    except SqlglotError:
        return ""
    if tree is None:
        return ""
    known = {t.name.lower(): t for t in list_tables(db)}
    lines, seen = [], set()
    for node in tree.find_all(exp.Table):
        table = known.get(node.name.lower())
        key = (node.alias_or_name.lower(), node.name.lower())
        if table is None or key in seen:
            continue
        seen.add(key)
        label = f"{node.alias} = {table.name}" if node.alias else table.name
        lines.append(f"{label}: {', '.join(c.name for c in table.columns)}")
    return "\n".join(lines)


def serialize_schema(db: Database, *, tables: list[str] | None = None,
                     columns: dict[str, list[str]] | None = None, samples: int = 3) -> str:
    """CREATE TABLE statements (keys included) with `samples` example values per column.

    `tables` keeps only those tables; `columns` keeps only those columns of a table
    (key columns are always kept, so joins stay visible).
    """
    found = list_tables(db)
    wanted = {t.lower() for t in tables} if tables else None
    keep = {t.lower(): {c.lower() for c in cols} for t, cols in (columns or {}).items()}
    blocks = []
    for table in found:
        if wanted is not None and table.name.lower() not in wanted:
            continue
        fk_columns = {fk[0].lower() for fk in table.foreign_keys}
        lines = []
        for col in table.columns:
            if table.name.lower() in keep and col.name.lower() not in keep[table.name.lower()] \
                    and not col.primary_key and col.name.lower() not in fk_columns:
                continue
            values = _samples(db, table.name, col.name, samples) if samples else []
            example = f"  -- e.g. {', '.join(values)}" if values else ""
            lines.append(f"  {_quote(col.name)} {col.type}".rstrip() + "," + example)
        pk = [c.name for c in table.columns if c.primary_key]
        if pk:
            lines.append(f"  PRIMARY KEY ({', '.join(_quote(c) for c in pk)}),")
        for column, ref_table, ref_column in table.foreign_keys:
            target = f"{_quote(ref_table)}({_quote(ref_column)})" if ref_column else _quote(ref_table)
            lines.append(f"  FOREIGN KEY ({_quote(column)}) REFERENCES {target},")
        if lines:
            last = lines[-1]
            head, sep, comment = last.partition("  -- ")
            lines[-1] = head.rstrip(",") + (sep + comment if sep else "")
        blocks.append(f"CREATE TABLE {_quote(table.name)} (\n" + "\n".join(lines) + "\n);")
    return "\n\n".join(blocks)
