"""The quick start's sample database: shipped, rebuilt identically by its script, answers as documented."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

from refinegraph.data import sample_db

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_sample_db.py"
QUICK_START_SQL = """
SELECT p.name, SUM(i.quantity) AS units FROM order_item i
JOIN product p ON p.product_id = i.product_id JOIN orders o ON o.order_id = i.order_id
WHERE o.status != 'cancelled' GROUP BY p.product_id ORDER BY units DESC, p.name LIMIT 4
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
        # "Which three products sold the most units in orders that were not cancelled?": three
        # products at 20 units, the fourth well below, so the answer is one set of three
        top = db.execute(QUICK_START_SQL).fetchall()
        assert {name for name, _ in top[:3]} == {"Pour-over kettle", "Filter beans 500g", "Earl Grey 250g"}
        assert [units for _, units in top] == [20, 20, 20, 16]
