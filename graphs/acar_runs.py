"""Recorded runs of the trace store as calibration data for ACAR (graphs/acar_calibration.py).

A run's task prompts (the solver_cot prompt that probes and mode graphs send, roles
"solver" and "probe") and their completions are what each model said on that question,
in the order the runs asked. Collected over the store, they form a pool: one entry per
question, one source per model name, each model's recorded price (run_started). The
gold answers come from a file (a pool or a GSM8K-format jsonl): traces record no gold.

Only questions on which every model the calibration needs has answered are kept (the
others are counted and reported): ACAR runs alone record only the models their mode
called, which would leave the easy questions out, so record each model on every question
(e.g. `bench gsm8k --graphs self-consistency@probe,greedy@a,greedy@b,greedy@c`). Replays
(`replay_of`) are skipped: they repeat their original.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinegraph.config import Config, ModelSpec
from refinegraph.prompts import load_prompt
from refinegraph.tools.answers import gsm8k_gold
from refinegraph.trace.store import TraceStore

TASK_ROLES = ("solver", "probe")


@dataclass
class RecordedPool:
    """What the store holds: entries in the pool format, and each model's recorded price."""

    entries: list[dict[str, Any]]
    prices: dict[str, tuple[float | None, float | None]]
    runs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def read_gold(path: Path) -> dict[str, str]:
    """Question text -> gold answer, from a pool file (`gold`) or a GSM8K jsonl (`answer` with ####)."""
    golds = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                golds[row["question"].strip()] = str(row["gold"]) if "gold" in row else gsm8k_gold(row["answer"])
    return golds


def _task_of(started: dict[str, Any]) -> str | None:
    value = started.get("input", {})
    task = value.get("task") if isinstance(value, dict) else value
    return task.strip() if isinstance(task, str) else None


def recorded_pool(store: TraceStore, golds: dict[str, str], needed: list[str], *,
                  graphs: set[str] | None = None) -> RecordedPool:
    """The store's task completions per question and model (see the module docstring)."""
    samples: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    prices: dict[str, tuple[float | None, float | None]] = {}
    skipped: dict[str, int] = defaultdict(int)
    runs = 0
    for row in store.all_runs():
        if row["replay_of"] or (graphs and row["graph"] not in graphs):
            continue
        started = next(iter(store.events(row["run_id"], types={"run_started"})), None)
        task = _task_of(started) if started else None
        if task is None:
            skipped["runs without a text task"] += 1
            continue
        runs += 1
        for name, entry in started.get("models", {}).items():
            prices.setdefault(name, (entry.get("price_input_per_mtok"), entry.get("price_output_per_mtok")))
        prompt = load_prompt("solver_cot").render(task=task)
        for call in store.events(row["run_id"], types={"llm_call"}):
            if call["role"] not in TASK_ROLES:
                continue
            if store.get_blob(call["request_blob"]).get("messages") != prompt:
                continue
            samples[task][call["model"]].extend(store.get_blob(call["response_blob"])["texts"])
    entries = []
    for task, by_model in samples.items():
        if task not in golds:
            skipped["questions without a gold answer"] += 1
            continue
        missing = [m for m in needed if not by_model.get(m)]
        if missing:
            skipped[f"questions some model did not answer ({', '.join(sorted(missing))})"] += 1
            continue
        entries.append({"id": f"recorded-{len(entries)}", "question": task, "gold": golds[task],
                        "samples": {m: list(texts) for m, texts in by_model.items()}})
    return RecordedPool(entries, prices, runs, dict(skipped))


def write_recorded(pool: RecordedPool, path: Path) -> Config:
    """The recorded pool written to `path`, and a config with one pool model per recorded model."""
    with open(path, "w", encoding="utf-8") as out:
        for entry in pool.entries:
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    models = {name: ModelSpec(backend="pool", pool_file=str(path), pool_sources=[name], price_input_per_mtok=price[0],
                              price_output_per_mtok=price[1])
              for name, price in sorted(pool.prices.items())
              if any(name in e["samples"] for e in pool.entries)}
    first = next(iter(models), "local")
    return Config(models=models or {"local": ModelSpec()}, roles={"default": first})
