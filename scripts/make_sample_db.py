"""Write refinegraph/data/shop.sqlite: the small shop database the README's quick start asks.

The data is made up for this project (no source, the project's own licence, Apache-2.0):
6 customers, 8 products, 30 orders with their lines. Deterministic, so re-running this
script gives the same rows: `python scripts/make_sample_db.py`.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / "refinegraph" / "data" / "shop.sqlite"

SCHEMA = """
CREATE TABLE customer (
    customer_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    city TEXT NOT NULL,
    joined DATE NOT NULL
);
CREATE TABLE product (
    product_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price REAL NOT NULL
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customer(customer_id),
    order_date DATE NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('paid', 'shipped', 'cancelled'))
);
CREATE TABLE order_item (
    order_id INTEGER NOT NULL REFERENCES orders(order_id),
    product_id INTEGER NOT NULL REFERENCES product(product_id),
    quantity INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
"""

CUSTOMERS = [
    (1, "Ada Moreau", "Lyon", "2024-01-15"), (2, "Bram de Vries", "Utrecht", "2024-02-03"),
    (3, "Chiara Rossi", "Turin", "2024-03-21"), (4, "Dmitri Volkov", "Lyon", "2024-05-09"),
    (5, "Elin Berg", "Uppsala", "2024-06-30"), (6, "Farid Haddad", "Utrecht", "2024-08-12"),
]
PRODUCTS = [
    (1, "Espresso beans 1kg", "coffee", 24.0), (2, "Filter beans 500g", "coffee", 12.5),
    (3, "Green tea 100g", "tea", 7.9), (4, "Earl Grey 250g", "tea", 9.5),
    (5, "Hand grinder", "equipment", 59.0), (6, "Pour-over kettle", "equipment", 45.0),
    (7, "Ceramic mug", "accessories", 11.0), (8, "Paper filters x100", "accessories", 4.5),
]


def orders() -> tuple[list[tuple], list[tuple]]:
    """30 orders spread over customers, months and statuses, each with 1-3 lines."""
    rows, items = [], []
    statuses = ["paid", "shipped", "shipped", "paid", "cancelled"]
    for order_id in range(1, 31):
        customer = (order_id * 5) % 6 + 1
        month = (order_id * 7) % 12 + 1
        day = (order_id * 11) % 28 + 1
        rows.append((order_id, customer, f"2025-{month:02d}-{day:02d}", statuses[order_id % 5]))
        for line in range(order_id % 3 + 1):
            product = (order_id * 3 + line * 5) % 8 + 1
            items.append((order_id, product, (order_id + line) % 4 + 1))
    return rows, items


def build(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO customer VALUES (?, ?, ?, ?)", CUSTOMERS)
        db.executemany("INSERT INTO product VALUES (?, ?, ?, ?)", PRODUCTS)
        order_rows, item_rows = orders()
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", order_rows)
        db.executemany("INSERT INTO order_item VALUES (?, ?, ?)", item_rows)
    db.close()
    tmp.replace(target)


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET)
    print(f"wrote {TARGET if len(sys.argv) == 1 else sys.argv[1]}")
