"""Where the tests' data is. All of it lives in tests/data (its README gives each file's
source and licence), so a fresh clone's tests read nothing outside the repository; the
larger data sets beside a checkout are the benchmarks' alone."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SPIDER = DATA / "spider_mini"
"""A Spider-layout folder: dev.json and database/<db_id>/<db_id>.sqlite."""
POOLS = DATA / "pools"
"""Recorded pools, gzipped (4 MB of Date completions, mostly repeated, are 67 KB so)."""


def spider_sqlite(db_id: str) -> Path:
    """The stored (read-only) Spider database file of `db_id`: tests open a copy of it."""
    path = SPIDER / "database" / db_id / f"{db_id}.sqlite"
    if not path.is_file():
        stored = sorted(p.name for p in (SPIDER / "database").iterdir())
        raise FileNotFoundError(f"no database {db_id!r} in {SPIDER} (it holds {', '.join(stored)}): "
                                "add it there and to tests/data/README.md")
    return path


def unpack_pool(name: str, folder: Path) -> Path:
    """`folder`/<name>.jsonl, a plain copy of the stored pool `name` (e.g. date_faithfulcot),
    for the code that reads pool files."""
    target = folder / f"{name}.jsonl"
    if not target.is_file():
        with gzip.open(POOLS / f"{name}.jsonl.gz", "rb") as packed, open(target, "wb") as plain:
            shutil.copyfileobj(packed, plain)
    return target
