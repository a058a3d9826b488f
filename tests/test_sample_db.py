"""The quick start's sample database: shipped, rebuilt identically by its script, answers as documented."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

from refinegraph.data import sample_db

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_sample_db.py"
QUICK_START_SQL = """
SELECT c.name, SUM(p.price * i.quantity) AS spent FROM customer c
JOIN orders o ON o.customer_id = c.customer_id JOIN order_item i ON i.order_id = o.order_id
JOIN product p ON p.product_id = i.product_id WHERE o.status != 'cancelled'
GROUP BY c.customer_id ORDER BY spent DESC LIMIT 1
"""


def dump(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return list(db.iterdump())


def test_the_shipped_database_is_what_its_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample_db", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path / "shop.sqlite")
    assert dump(tmp_path / "shop.sqlite") == dump(sample_db())


def test_the_quick_start_question_has_one_answer():
    with sqlite3.connect(f"file:{sample_db()}?mode=ro", uri=True) as db:
        counts = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("customer", "product", "orders", "order_item")]
        assert counts == [6, 8, 30, 60]
        assert db.execute(QUICK_START_SQL).fetchall() == [("Bram de Vries", 783.9)]
