"""refinegraph.tools.sql on real Spider databases: connect() forms, the row cap, schemas for
prompts, result comparison and rendering, and the same gold queries answered alike by SQLite
and PostgreSQL.

PostgreSQL tests read the DSN from REFINEGRAPH_PG_DSN (default: the local test server, a
superuser of trust auth) and skip only when no server answers. The Spider databases are
tests/data/spider_mini's, copied before anything opens them.

The helpers at the top copy a Spider database and find the PostgreSQL DSN (skipping
without one), for test_sql_hostile.py and test_sql_graphs.py as well; the engine copies
themselves (DuckDB file, PostgreSQL schema) are refinegraph.tools.sql.copies.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from refinegraph.tools.sql import (
    Database,
    connect,
    orders_rows,
    render_result,
    result_key,
    results_match,
    serialize_schema,
)
from refinegraph.tools.sql.copies import (
    build_duckdb,
    build_pg_schema,
    drop_pg_schema,
    pg_schema_url,
    read_sqlite_tables,
    text_columns,
    to_postgres,
    unique_schema,
)

from conftest import require_pg
from data_paths import SPIDER, spider_sqlite

# -- helpers shared with test_sql_hostile.py and test_sql_graphs.py -----------------------------

def copy_spider(db_id: str, folder: Path) -> Path:
    """A private copy of a Spider database: tests never open the stored file itself."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{db_id}.sqlite"
    shutil.copyfile(spider_sqlite(db_id), target)
    target.chmod(0o644)
    return target


def pg_dsn() -> str:
    """REFINEGRAPH_PG_DSN, else the local test server; skips, saying why, only when no server answers."""
    return require_pg()


_READERS: dict[str, str] = {}
"""schema -> the URL of a read-only role made for it by `refinegraph sql grant`'s code."""


@contextlib.contextmanager
def pg_reader(dsn: str, schema: str) -> Iterator[str]:
    """A role made as `refinegraph sql grant --apply` makes it, reading `schema` only: the
    least privilege model SQL runs with. Yields its URL (trust auth: no password); dropped after."""
    from urllib.parse import urlparse

    import psycopg

    from refinegraph.tools.sql.grant import ReadOnlyRole, apply

    role = f"rg_reader_{uuid.uuid4().hex[:10]}"
    apply(dsn, ReadOnlyRole(role=role, schema=schema, database=urlparse(dsn).path.strip("/")))
    parsed = urlparse(dsn)
    url = pg_schema_url(parsed._replace(netloc=f"{role}@{parsed.hostname}:{parsed.port or 5432}").geturl(), schema)
    _READERS[schema] = url
    try:
        yield url
    finally:
        _READERS.pop(schema, None)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def concert_sqlite(tmp_path_factory) -> Path:
    return copy_spider("concert_singer", tmp_path_factory.mktemp("sqlite"))


@pytest.fixture(scope="module")
def concert_duckdb(tmp_path_factory, concert_sqlite) -> Path:
    pytest.importorskip("duckdb")
    return build_duckdb(concert_sqlite, tmp_path_factory.mktemp("duckdb") / "concert_singer.duckdb")


@pytest.fixture(scope="module")
def concert_pg_schema(concert_sqlite):
    pytest.importorskip("psycopg")
    dsn = pg_dsn()
    schema = unique_schema("rg_engines")
    build_pg_schema(dsn, schema, concert_sqlite)
    try:
        with pg_reader(dsn, schema):
            yield schema
    finally:
        drop_pg_schema(dsn, schema)


def pg_url(schema: str) -> str:
    """The schema's URL: as its read-only role when one was made (pg_reader), else the DSN's."""
    return _READERS.get(schema) or pg_schema_url(pg_dsn(), schema)


@pytest.fixture(params=["sqlite", "duckdb", "postgres"])
def open_concert(request):
    """A factory for a Database on concert_singer, on each engine in turn."""
    engine = request.param
    if engine == "sqlite":
        target = str(request.getfixturevalue("concert_sqlite"))
    elif engine == "duckdb":
        target = f"duckdb:///{request.getfixturevalue('concert_duckdb')}"
    else:
        target = pg_url(request.getfixturevalue("concert_pg_schema"))

    def open_(**kwargs) -> Database:
        db = connect(target, **kwargs)
        assert db.engine == engine
        return db

    return open_


# -- connect() ---------------------------------------------------------------------------------

def test_connect_sqlite_path_forms(concert_sqlite, tmp_path, monkeypatch):
    expected = str(concert_sqlite.resolve())
    relative_dir = tmp_path / "cwd"
    relative_dir.mkdir()
    shutil.copyfile(concert_sqlite, relative_dir / "rel.db")
    monkeypatch.chdir(relative_dir)
    forms = {
        str(concert_sqlite): expected,
        concert_sqlite: expected,
        f"sqlite:///{concert_sqlite}": expected,   # absolute: sqlite:////abs/path
        "sqlite:///rel.db": str((relative_dir / "rel.db").resolve()),
        "rel.db": str((relative_dir / "rel.db").resolve()),
    }
    for form, target in forms.items():
        db = connect(form, timeout_s=2.5, max_rows=7)
        assert (db.engine, db.target, db.timeout_s, db.max_rows) == ("sqlite", target, 2.5, 7), form
        assert db.execute_sync("SELECT COUNT(*) FROM singer").rows == [(6,)], form


def test_connect_sqlite_path_with_url_characters(concert_sqlite, tmp_path):
    """A file whose name holds characters that mean something in a file: URI still opens."""
    folder = tmp_path / "odd #dir%20?x"
    folder.mkdir()
    odd = folder / "concert singer#1.sqlite"
    shutil.copyfile(concert_sqlite, odd)
    result = connect(odd).execute_sync("SELECT COUNT(*) FROM stadium")
    assert result.ok, result.error
    assert result.rows == [(9,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name], "a stray database file was created"


def test_connect_duckdb_forms(concert_duckdb):
    for form in (f"duckdb:///{concert_duckdb}", str(concert_duckdb), concert_duckdb):
        db = connect(form)
        assert (db.engine, db.target) == ("duckdb", str(concert_duckdb.resolve())), form
        assert db.execute_sync("SELECT COUNT(*) FROM singer").rows == [(6,)], form


def test_connect_postgres_url_with_schema(concert_pg_schema):
    url = pg_url(concert_pg_schema)
    db = connect(url + "&connect_timeout=3", timeout_s=4)
    assert (db.engine, db.schema, db.url) == ("postgres", concert_pg_schema, url + "&connect_timeout=3")
    assert "schema=" not in db.target and "connect_timeout=3" in db.target
    assert db.introspect("SELECT current_schema()") == [(concert_pg_schema,)]
    assert db.execute_sync("SELECT COUNT(*) FROM singer").rows == [(6,)]
    # postgres:// is the same engine; without ?schema= the search_path is left alone
    plain = connect(pg_dsn().replace("postgresql://", "postgres://", 1))
    assert plain.engine == "postgres" and plain.schema is None
    assert plain.target.startswith("postgresql://")


@pytest.mark.parametrize("url", ["mysql://user@localhost/db", "mssql+pyodbc://host/db", "http://example.com/data"])
def test_connect_unknown_scheme_is_value_error(url):
    with pytest.raises(ValueError, match="unsupported database"):
        connect(url)


@pytest.mark.parametrize("form", ["{d}/missing.sqlite", "sqlite:///{d}/missing.sqlite", "{d}/missing.db",
                                  "duckdb:///{d}/missing.duckdb", "{d}/missing.duckdb"])
def test_connect_missing_file_is_file_not_found(form, tmp_path):
    with pytest.raises(FileNotFoundError):
        connect(form.format(d=tmp_path))
    assert list(tmp_path.iterdir()) == [], "connect() must not create the missing file"


# -- execution: row cap, columns, async --------------------------------------------------------

def test_row_cap_sets_truncated(open_concert):
    capped = open_concert(max_rows=4).execute_sync("SELECT name FROM singer ORDER BY singer_id")
    assert capped.ok, capped.error
    assert capped.truncated and len(capped.rows) == 4
    assert [c.lower() for c in capped.columns] == ["name"]

    exact = open_concert(max_rows=6).execute_sync("SELECT name FROM singer ORDER BY singer_id")
    assert not exact.truncated and len(exact.rows) == 6
    assert exact.rows[:4] == capped.rows


async def test_execute_is_async_and_never_raises(open_concert):
    db = open_concert(timeout_s=5)
    good = await db.execute("SELECT COUNT(*) FROM concert")
    assert good.ok and good.rows == [(6,)] and good.elapsed_ms > 0
    bad = await db.execute("SELECT no_such_column FROM concert")
    assert bad.error_class == "execution" and bad.error and not bad.rows


def test_syntax_error_class(open_concert):
    result = open_concert().execute_sync("SELECT name FROM singer WHERE")
    assert result.error_class in ("rejected", "syntax"), result
    assert result.error


# -- serialize_schema --------------------------------------------------------------------------

def _block(schema_text: str, table: str) -> str:
    for block in schema_text.split("\n\n"):
        if block.lower().startswith(f'create table "{table.lower()}"'):
            return block
    raise AssertionError(f"no CREATE TABLE for {table} in:\n{schema_text}")


def test_serialize_schema_full(open_concert):
    text = serialize_schema(open_concert(), samples=2)
    blocks = text.split("\n\n")
    assert len(blocks) == 4
    lower = text.lower()
    for table in ("stadium", "singer", "concert", "singer_in_concert"):
        block = _block(text, table)
        assert block.endswith(");")
        assert not block.rstrip(");").rstrip().endswith(","), f"dangling comma in:\n{block}"
    assert 'primary key ("singer_id")' in _block(text, "singer").lower()
    assert 'primary key ("concert_id", "singer_id")' in _block(text, "singer_in_concert").lower()
    assert 'foreign key ("stadium_id") references "stadium"("stadium_id")' in _block(text, "concert").lower()
    sic = _block(text, "singer_in_concert").lower()
    assert sic.count("foreign key") == 2
    assert 'references "singer"("singer_id")' in sic and 'references "concert"("concert_id")' in sic
    # sample values: text quoted, numbers bare, at most `samples` per column
    singer_name = next(line for line in _block(text, "singer").splitlines()
                       if line.lower().lstrip().startswith('"name"'))
    assert "-- e.g. " in singer_name
    assert len(singer_name.split("-- e.g. ")[1].split(", ")) == 2
    assert "'" in singer_name
    capacity = next(line for line in _block(text, "stadium").splitlines() if '"capacity"' in line.lower())
    assert capacity.split("-- e.g. ")[1].split(", ")[0].isdigit()
    assert "bigint" in lower or "integer" in lower


def test_serialize_schema_without_samples(open_concert):
    text = serialize_schema(open_concert(), samples=0)
    assert "-- e.g." not in text
    assert text.lower().count("create table") == 4


def test_serialize_schema_pruned_to_tables(open_concert):
    text = serialize_schema(open_concert(), tables=["Singer", "concert"], samples=1)
    names = sorted(block.split('"')[1].lower() for block in text.split("\n\n"))
    assert names == ["concert", "singer"]


def test_serialize_schema_pruned_columns_keep_keys(open_concert):
    text = serialize_schema(open_concert(), tables=["concert", "singer_in_concert"],
                            columns={"concert": ["Theme"], "SINGER_IN_CONCERT": []}, samples=0)
    concert = [line.strip().lower() for line in _block(text, "concert").splitlines()[1:-1]]
    column_lines = [line for line in concert if line.startswith('"')]
    # Theme asked for; concert_ID (primary key) and Stadium_ID (foreign key) kept for joins
    assert sorted(line.split('"')[1] for line in column_lines) == ["concert_id", "stadium_id", "theme"]
    assert not any('"year"' in line or '"concert_name"' in line for line in concert)
    assert any(line.startswith("foreign key") for line in concert)
    sic = _block(text, "singer_in_concert").lower()
    assert '"concert_id"' in sic and '"singer_id"' in sic  # both are key columns


def test_serialize_schema_pg_foreign_keys_not_duplicated_by_other_schemas(concert_sqlite, concert_pg_schema):
    """Constraint names repeat across schemas holding the same tables (one schema per
    database is the usual layout); another schema's constraints must not leak in."""
    dsn = pg_dsn()
    twin = unique_schema("rg_twin")
    build_pg_schema(dsn, twin, concert_sqlite)
    try:
        text = serialize_schema(connect(pg_url(concert_pg_schema)), samples=0)
    finally:
        drop_pg_schema(dsn, twin)
    assert _block(text, "concert").lower().count("foreign key") == 1, text
    assert _block(text, "singer_in_concert").lower().count("foreign key") == 2, text
    assert _block(text, "singer").lower().count("primary key") == 1, text


# -- comparing and rendering results -----------------------------------------------------------

def test_results_match_set_semantics():
    gold = [(1, "a"), (2, "b")]
    assert results_match([(2, "b"), (1, "a")], gold)
    assert results_match([(1, "a"), (2, "b"), (2, "b")], gold)  # a set of rows, as BIRD compares
    assert not results_match([(1, "a")], gold)
    assert not results_match([(1, "a"), (2, "c")], gold)
    assert not results_match([("a", 1), ("b", 2)], gold)  # column order counts
    assert results_match([], [])
    assert not results_match([], gold)


def test_results_match_ordered_semantics():
    gold = [(1, "a"), (2, "b")]
    assert results_match([(1, "a"), (2, "b")], gold, ordered=True)
    assert not results_match([(2, "b"), (1, "a")], gold, ordered=True)
    assert not results_match([(1, "a"), (2, "b"), (2, "b")], gold, ordered=True)


def test_results_match_normalizes_engine_types():
    assert results_match([(Decimal("3"), Decimal("2.5"), 4.0)], [(3, 2.5, 4)])
    assert results_match([(b"\x01\xff",)], [(bytearray(b"\x01\xff"),)])
    assert results_match([(None, "x")], [(None, "x")], ordered=True)
    assert not results_match([("3",)], [(3,)])


def test_orders_rows():
    assert orders_rows("SELECT name FROM singer ORDER BY age DESC")
    assert orders_rows("SELECT `name` FROM `singer` ORDER BY `age` LIMIT 1")
    assert orders_rows("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1")
    assert not orders_rows("SELECT COUNT(*) FROM singer")
    assert not orders_rows("SELECT * FROM (SELECT name FROM singer ORDER BY age) AS t")
    assert not orders_rows("SELECT name FROM singer WHERE age > (SELECT age FROM singer ORDER BY age LIMIT 1)")
    assert not orders_rows("this is not SQL (")


def test_result_key():
    rows = [(1, "a"), (2, "b"), (3, None)]
    assert result_key(rows) == result_key(list(reversed(rows)))
    assert result_key(rows) == result_key(rows + [(1, "a")])
    assert result_key([(Decimal("2"), 1.0)]) == result_key([(2, 1)])
    assert result_key(rows) != result_key(rows[:2])
    assert result_key([(1,)]) != result_key([("1",)])
    assert len(result_key(rows)) == 16


def test_render_result_row_truncation():
    rows = [(i, f"name{i}", None) for i in range(25)]
    text = render_result(["id", "name", "note"], rows, max_rows=5, max_chars=10_000)
    lines = text.splitlines()
    assert lines[0] == "id | name | note"
    assert lines[1] == "0 | name0 | NULL"
    assert len(lines) == 1 + 5 + 1 and lines[-1] == "... (25 rows in all)"


def test_render_result_char_truncation():
    rows = [("x" * 200,) for _ in range(10)]
    text = render_result(["long"], rows, max_rows=10, max_chars=300)
    assert len(text) <= 300
    assert text.endswith("... (truncated)")
    short = render_result(["a"], [(1,), (2,)])
    assert short == "a\n1\n2"


# -- the same gold queries on SQLite and PostgreSQL --------------------------------------------

def _gold(db_id: str) -> list[str]:
    path = SPIDER / "dev.json"
    return [item["query"] for item in json.loads(path.read_text()) if item["db_id"] == db_id]


@pytest.mark.parametrize("db_id", ["concert_singer", "pets_1"])
def test_gold_queries_agree_on_sqlite_and_postgres(db_id, tmp_path):
    dsn = pg_dsn()
    pytest.importorskip("psycopg")
    sqlite_path = copy_spider(db_id, tmp_path)
    schema = unique_schema(f"rg_{db_id}")
    build_pg_schema(dsn, schema, sqlite_path)
    try:
        # the suite's DSN is a superuser's: allowed here in so many words (these are our own gold queries)
        lite, pg = connect(sqlite_path, timeout_s=10), connect(pg_url(schema), timeout_s=10, allow_privileged_role=True)
        text_cols = text_columns(read_sqlite_tables(sqlite_path))
        gold = _gold(db_id)
        assert gold, f"no gold queries for {db_id}"
        differ = []
        for query in gold:
            expected = lite.execute_sync(query)
            assert expected.ok, f"gold query fails on SQLite: {query}: {expected.error}"
            got = pg.execute_sync(to_postgres(query, text_cols))
            if not (got.ok and results_match(got.rows, expected.rows, ordered=orders_rows(query))):
                differ.append(f"{query}\n    sqlite: {expected.rows[:5]}\n    postgres: "
                              f"{got.rows[:5] if got.ok else got.error_class + ': ' + str(got.error).splitlines()[0]}")
    finally:
        drop_pg_schema(dsn, schema)
    agree = len(gold) - len(differ)
    assert agree >= 0.9 * len(gold), (f"{db_id}: only {agree}/{len(gold)} gold queries agree; differing:\n"
                                      + "\n".join(differ))
