"""Two halves of a Spider/BIRD folder, so that systems are chosen on one and scored on the other.

`bench spider --pool P --select-on A --data B` ranks and weighs recorded systems on A's
questions and reports on B's; this module writes A and B as folders in the same layout
(`dev.json` plus a `database/` link to the original databases). Two fixed rules:

- `database`: whole databases go to one half (largest first, each to the half with fewer
  questions so far), so no schema, and no paraphrase of a question, is seen on both sides
  (Spider's own dev and test splits are split by database the same way);
- `seeded`: within each database, a seeded shuffle sends half of the questions each way.

    python -m refinegraph.bench.spider_split DATA OUT_A OUT_B [--by database|seeded] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

Rule = Literal["database", "seeded"]


def split_items(items: list[dict[str, Any]], by: Rule = "database", seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The questions in two halves by `by` (each half keeps the original order)."""
    by_db: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_db[item["db_id"]].append(index)
    halves: tuple[list[int], list[int]] = ([], [])
    if by == "database":
        for db in sorted(by_db, key=lambda d: (-len(by_db[d]), d)):
            smaller = halves[0] if len(halves[0]) <= len(halves[1]) else halves[1]
            smaller.extend(by_db[db])
    elif by == "seeded":
        rng = random.Random(seed)
        for db in sorted(by_db):
            indexes = list(by_db[db])
            rng.shuffle(indexes)
            cut = (len(indexes) + rng.randint(0, 1)) // 2
            halves[0].extend(indexes[:cut])
            halves[1].extend(indexes[cut:])
    else:
        raise ValueError(f"unknown split rule {by!r}: database or seeded")
    return [items[i] for i in sorted(halves[0])], [items[i] for i in sorted(halves[1])]


def write_half(data_dir: Path, items: list[dict[str, Any]], out_dir: Path, split_file: str = "dev.json") -> Path:
    """`out_dir` as a Spider/BIRD folder: the questions in `split_file`, and each database
    folder of `data_dir` linked (not copied) under the same name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / split_file).write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in ("database", "dev_databases", "databases"):
        source = Path(data_dir) / name
        link = out_dir / name
        if source.is_dir() and not link.exists():
            link.symlink_to(source.resolve(), target_is_directory=True)
    return out_dir


def split_folder(data_dir: Path, out_a: Path, out_b: Path, by: Rule = "database", seed: int = 0,
                 split_file: str = "dev.json") -> tuple[int, int]:
    """Write the two halves of `data_dir`; returns their sizes."""
    items = json.loads((Path(data_dir) / split_file).read_text(encoding="utf-8"))
    first, second = split_items(items, by, seed)
    write_half(data_dir, first, out_a, split_file)
    write_half(data_dir, second, out_b, split_file)
    return len(first), len(second)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Spider or BIRD folder (dev.json + database/)")
    parser.add_argument("out_a", type=Path)
    parser.add_argument("out_b", type=Path)
    parser.add_argument("--by", choices=["database", "seeded"], default="database")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = split_folder(args.data, args.out_a, args.out_b, args.by, args.seed)
    print(f"{args.out_a.name}: {sizes[0]} questions, {args.out_b.name}: {sizes[1]} questions (by {args.by})")


if __name__ == "__main__":
    main()
