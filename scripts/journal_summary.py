"""What a benchmark folder holds so far, on the questions every method has finished.

    python scripts/journal_summary.py docs/bench/gsm8k-qwen [--methods greedy,self-consistency]

A live benchmark (`refinegraph bench gsm8k|spider|humaneval --out FOLDER`) writes its
summary and plot when every job is done; stopped before that, its journal
(progress.jsonl) still holds each finished job. This reads the journal, keeps the questions
that every method finished (so the methods are compared on the same questions), and writes
`summary-partial.json` and `accuracy-partial.png` beside it with the package's own
summary and plot. Rerunning the benchmark's command finishes the folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from refinegraph.bench.common import plot, summarize

SCORES = {"spider": ("ex", "execution accuracy (%)"), "humaneval": ("pass_at_1", "pass@1, hidden tests (%)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--methods", help="comma-separated (default: every method in the journal)")
    args = parser.parse_args()
    settings = json.loads((args.folder / "progress-settings.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (args.folder / "progress.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip().endswith("}")]
    methods = args.methods.split(",") if args.methods else list(dict.fromkeys(r["method"] for r in rows))
    done = {m: {r["question"] for r in rows if r["method"] == m} for m in methods}
    paired = set.intersection(*done.values()) if done else set()
    kept = [SimpleNamespace(**r) for r in rows if r["method"] in methods and r["question"] in paired]
    score, label = SCORES.get(settings["benchmark"], ("accuracy", "accuracy (%)"))
    summary = summarize(kept, methods, score=score)
    listed = settings.get("questions", settings.get("problems"))  # a count, or the indexes drawn
    total = len(listed) if isinstance(listed, list) else listed
    title = (f"{settings['benchmark']} ({settings.get('data')}), model {settings['model_spec'].get('model')}: "
             f"{len(paired)} of {total} questions done by every method")
    report = {"title": title, "paired_questions": sorted(paired), "summary": summary,
              "journal_jobs": len(rows), "settings": settings}
    (args.folder / "summary-partial.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(args.folder, summary, title, y=score, ylabel=label, filename="accuracy-partial.png")
    print(title)
    for row in summary:
        print(f"  {row['method']:<18} {100 * row[score]:5.1f}%  mean tokens {row['mean_tokens']:7.1f}  "
              f"s/question {row['mean_seconds']:6.1f}  errors {row['errors']}")


if __name__ == "__main__":
    main()
