"""The two halves `bench spider --select-on` needs: disjoint, complete, a fixed rule."""

from __future__ import annotations

import json

from refinegraph.bench.spider_split import split_folder, split_items

ITEMS = [{"db_id": db, "question": f"{db} {i}", "query": "SELECT 1"}
         for db, size in (("a", 5), ("b", 4), ("c", 3), ("d", 1)) for i in range(size)]


def test_by_database_keeps_each_database_on_one_side_and_balances_sizes():
    first, second = split_items(ITEMS, "database")
    assert {q["db_id"] for q in first} == {"a", "d"} and {q["db_id"] for q in second} == {"b", "c"}
    assert len(first) + len(second) == len(ITEMS)


def test_seeded_halves_each_database_and_is_repeatable():
    first, second = split_items(ITEMS, "seeded", seed=3)
    assert split_items(ITEMS, "seeded", seed=3) == (first, second)
    assert not {q["question"] for q in first} & {q["question"] for q in second}
    assert sorted(q["question"] for q in first + second) == sorted(q["question"] for q in ITEMS)
    assert {q["db_id"] for q in first} >= {"a", "b", "c"} and {q["db_id"] for q in second} >= {"a", "b", "c"}


def test_split_folder_writes_two_spider_folders_sharing_the_databases(tmp_path):
    data = tmp_path / "spider"
    (data / "database" / "a").mkdir(parents=True)
    (data / "dev.json").write_text(json.dumps(ITEMS), encoding="utf-8")
    assert split_folder(data, tmp_path / "x", tmp_path / "y") == (6, 7)
    for half in ("x", "y"):
        assert (tmp_path / half / "database" / "a").is_dir()
        assert json.loads((tmp_path / half / "dev.json").read_text(encoding="utf-8"))
