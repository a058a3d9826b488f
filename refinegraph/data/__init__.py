"""Small data shipped with the package: the quick start's sample shop database.

`shop.sqlite` is made by `scripts/make_sample_db.py` (made-up rows, the project's own
licence, Apache-2.0): customers, products, orders and their lines.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DB = Path(__file__).resolve().parent / "shop.sqlite"


def sample_db() -> Path:
    """The sample shop database (open it read-only: it lives inside the installed package)."""
    return SAMPLE_DB
