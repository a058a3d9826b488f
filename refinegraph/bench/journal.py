"""Resumable benchmarks: each finished (question, method) is appended to the output folder.

`bench spider`, `bench gsm8k` and `bench humaneval` take an hour or more on a CPU. Each
outcome is written to `progress.jsonl` as soon as it is scored (one line, flushed and fsynced), beside
`progress-settings.json`, what the run was asked (data, methods, questions, budget, model,
params). Started again on the same folder, a run with the same settings skips what is
there and continues; a run with other settings is refused (a typed error naming the
difference) rather than mixing two benchmarks in one report. A line cut by a kill is
ignored (its question is answered again). Running the jobs, and the report of a stopped
run, is refinegraph.cli.bench_runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

PROGRESS = "progress.jsonl"
SETTINGS = "progress-settings.json"

T = TypeVar("T")


METHODS_KEY = "methods"
"""The settings file's section of per-method settings, which a folder may gain."""


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


class JournalMismatch(ValueError):
    """The output folder holds a run of other settings: resuming it would mix two benchmarks."""


class Journal:
    """The outcomes a benchmark has finished in `out_dir`, and the appending of new ones."""

    def __init__(self, out_dir: Path, settings: dict[str, Any], outcome_type: type[T],
                 methods: dict[str, Any] | None = None):
        """`settings` must match the folder's; `methods` (each method's own settings, e.g. its
        params) may grow: a method new to the folder is added, a known one must match."""
        self.out_dir = Path(out_dir)
        self.outcome_type = outcome_type
        self.settings = json.loads(json.dumps(settings, default=str))
        methods = json.loads(json.dumps(methods or {}, default=str))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        settings_path = self.out_dir / SETTINGS
        if settings_path.is_file():
            recorded = json.loads(settings_path.read_text(encoding="utf-8"))
            known = recorded.pop(METHODS_KEY, {})
            _forget_retired_model_fields(recorded, self.settings)
            differ = sorted(k for k in recorded.keys() | self.settings.keys()
                            if recorded.get(k) != self.settings.get(k))
            differ += sorted(f"{METHODS_KEY}.{m}" for m in methods if m in known and known[m] != methods[m])
            if differ:
                now = {**self.settings, **{f"{METHODS_KEY}.{m}": v for m, v in methods.items()}}
                before = {**recorded, **{f"{METHODS_KEY}.{m}": v for m, v in known.items()}}
                raise JournalMismatch(
                    f"{self.out_dir} holds a run with other settings ({', '.join(differ)}: "
                    f"{ {k: before.get(k) for k in differ} } there, { {k: now.get(k) for k in differ} } "
                    "now); give another --out folder, or remove that one to start again")
            methods = {**known, **methods}
        if methods:
            self.settings[METHODS_KEY] = methods
        _write_atomically(settings_path, json.dumps(self.settings, indent=2) + "\n")
        self.settings.pop(METHODS_KEY, None)
        self.done: list[Any] = self._read()

    def _read(self) -> list[Any]:
        path = self.out_dir / PROGRESS
        if not path.is_file():
            return []
        names = {f.name for f in fields(self.outcome_type)}  # type: ignore[arg-type]
        done, seen = [], set()
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed run, cut mid-write: that job runs again
            outcome = self.outcome_type(**{k: v for k, v in item.items() if k in names})
            key = (outcome.question, outcome.method)
            if key not in seen:
                seen.add(key)
                done.append(outcome)
        return done

    def finished(self) -> set[tuple[int, str]]:
        return {(o.question, o.method) for o in self.done}

    def pending(self, jobs: Sequence[tuple[Any, str]]) -> list[tuple[Any, str]]:
        """The (question, method) jobs not finished yet, in their order."""
        finished = self.finished()
        return [(q, m) for q, m in jobs if (q.index, m) not in finished]

    def record(self, outcome: Any) -> None:
        """Append one finished outcome, durably, before the next is counted."""
        line = json.dumps(asdict(outcome), ensure_ascii=False) + "\n"
        path = self.out_dir / PROGRESS
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as tail:
                tail.seek(-1, os.SEEK_END)
                if tail.read(1) != b"\n":
                    line = "\n" + line  # close a cut last line so this one parses
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.done.append(outcome)

    def outcomes(self, methods: Sequence[str]) -> list[Any]:
        """Every finished outcome, by question then method order (as a run from scratch gives)."""
        order = {m: i for i, m in enumerate(methods)}
        return sorted(self.done, key=lambda o: (o.question, order.get(o.method, len(order))))


MODEL_SPEC_KEY = "model_spec"


def _forget_retired_model_fields(recorded: dict[str, Any], now: dict[str, Any]) -> None:
    """Drop the recorded model settings today's backend settings no longer have.

    One settings class once served every backend, so folders begun then record fields (a
    pool's file, LangChain's kwargs) that the local backend's settings have since dropped:
    they never reached the model, and a folder must not be refused for them. Every field
    today's settings do have is still compared."""
    before, current = recorded.get(MODEL_SPEC_KEY), now.get(MODEL_SPEC_KEY)
    if isinstance(before, dict) and isinstance(current, dict):
        recorded[MODEL_SPEC_KEY] = {k: v for k, v in before.items() if k in current}


def model_identity(spec: Any) -> dict[str, Any]:
    """A model's settings as a journal compares them, with the local backend's default
    resolved to the packaged model it means today: a folder begun on Qwen must not be
    finished on SmolLM2 because the machine that resumes it lacks Qwen's parts."""
    identity = spec.model_dump()
    if spec.backend == "local" and not spec.model and not spec.model_path:
        from refinegraph.models.packaged import default_model_name

        identity["model"] = default_model_name()
    return identity

