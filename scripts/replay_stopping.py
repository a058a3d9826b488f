"""Replay adaptive-sc's stopping rules on recorded pools, by half (`index % 2`).

    python scripts/replay_stopping.py DATE_POOL GSM8K_POOL

Prints, per half and setting: accuracy (SC's), x fewer samples, answers that differ from
SC's. The rule that picks the default is in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys

from refinegraph.graphs.allocation import adaptive, winner_of
from refinegraph.tools.answers import get_projection

SETTINGS = ([("beta", b, t) for b in (1, 2, 3) for t in (0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)]
            + [("esc", w, None) for w in (2, 3, 4, 5, 6)])


def load(path: str, kind: str, source: str | None = None) -> list[tuple[int, list[str | None], str | None]]:
    project = get_projection(kind)
    rows = []
    with open(path, encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            entry = json.loads(line)
            texts = entry["samples"][source] if source else [t[0] for t in entry["samples"].values() if t]
            rows.append((index, [project(t) for t in texts], project(str(entry["gold"]))))
    return rows


def evaluate(rows, rule: str, batch: int, threshold: float | None) -> dict[str, float]:
    right = sc_right = used = full = differ = 0
    for _, keys, gold in rows:
        outcome = adaptive(keys, batch_size=batch, threshold=threshold or 0.9, rule=rule)
        sc = winner_of(keys)
        right += outcome.answer is not None and outcome.answer == gold
        sc_right += sc is not None and sc == gold
        differ += outcome.answer != sc
        used += outcome.used
        full += len(keys)
    return {"acc": 100 * right / len(rows), "sc": 100 * sc_right / len(rows), "x": full / used, "differ": differ}


def main() -> None:
    date = load(sys.argv[1], "date", "code-davinci-002/ltm-x40")
    gsm = load(sys.argv[2], "number")
    for half in (0, 1):
        for setting in SETTINGS:
            d = evaluate([r for r in date if r[0] % 2 == half], *setting)
            g = evaluate([r for r in gsm if r[0] % 2 == half], *setting)
            print(half, setting, f"date {d['acc']:.2f} ({d['sc']:.2f}) x{d['x']:.2f} differ {d['differ']} | "
                  f"gsm8k {g['acc']:.2f} ({g['sc']:.2f}) x{g['x']:.2f} differ {g['differ']}")


if __name__ == "__main__":
    main()
