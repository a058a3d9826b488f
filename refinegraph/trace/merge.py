"""Merging trace stores: the shards a batch's Ray workers wrote become one store.

Runs, their events, seals and blobs are copied as stored (bodies and hashes untouched),
so every merged run verifies exactly as it did in its shard. A run id already in the
target is compared, not overwritten:

- the same chain (same event hashes, nothing new): skipped, counted as `already`;
- the target holds a prefix of the source's chain (the run was resumed in its shard
  after an earlier merge): the new events and seals are appended, counted as `extended`;
- anything else is a conflict: `MergeConflict` is raised and nothing is written (or,
  with `on_conflict="skip"`, the run is left out and named in the report).

Everything is written in one transaction on the target: a refused merge changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from refinegraph.trace.chain import blob_refs
from refinegraph.trace.store import TraceStore
from refinegraph.trace.verify import verify_run


class MergeConflict(ValueError):
    """A run id present in two stores with different histories."""


@dataclass
class MergeReport:
    """What a merge did, run by run."""

    copied: list[str] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    blobs: int = 0
    events: int = 0
    unverified: dict[str, str] = field(default_factory=dict)
    """run id -> problem, for merged runs that do not verify in the target (should stay empty)."""

    @property
    def ok(self) -> bool:
        return not self.unverified

    def summary(self) -> str:
        parts = [f"{len(self.copied)} copied", f"{len(self.extended)} extended", f"{len(self.already)} already there"]
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} conflicting (skipped)")
        if self.unverified:
            parts.append(f"{len(self.unverified)} NOT verified")
        return ", ".join(parts) + f"; {self.events} events, {self.blobs} blobs written"


RUN_COLUMNS = ("run_id", "graph", "input_preview", "created_at", "status", "stop_reason", "answer_preview",
               "sealed_hash", "replay_of", "owner")


def run_ids(store: TraceStore) -> list[str]:
    """Every run id the store holds, oldest first."""
    return [row["run_id"] for row in store.all_runs()]


def _open(source: TraceStore | str | Path) -> tuple[TraceStore, bool]:
    if isinstance(source, TraceStore):
        return source, False
    return TraceStore(source), True


def merge_stores(sources: Iterable[TraceStore | str | Path], target: TraceStore | str | Path, *,
                 on_conflict: Literal["refuse", "skip"] = "refuse", verify: bool = True) -> MergeReport:
    """Copy every run of `sources` into `target` (see the module docstring); then, with
    `verify`, check each run written with `verify_run` and list any that fails."""
    report = MergeReport()
    target_store, close_target = _open(target)
    statements: list[tuple[str, tuple]] = []
    events: list[tuple[str, int, str, str, str, str]] = []
    blobs: dict[str, bytes] = {}
    planned: set[str] = set()  # run ids seen in this merge's sources
    try:
        for source in sources:
            store, close = _open(source)
            try:
                if store.path.resolve() == target_store.path.resolve():
                    raise ValueError(f"cannot merge {store.path} into itself")
                _plan_store(store, target_store, on_conflict, report, statements, events, blobs, planned)
            finally:
                if close:
                    store.close()
        target_store.transaction(statements, list(blobs.items()), events)
        report.events, report.blobs = len(events), len(blobs)
        if verify:
            for run_id in report.copied + report.extended:
                result = verify_run(target_store, run_id)
                if not result.ok:
                    report.unverified[run_id] = f"event {result.bad_seq}: {result.problem}"
        return report
    finally:
        if close_target:
            target_store.close()


def _plan_store(store: TraceStore, target: TraceStore, on_conflict: str, report: MergeReport,
                statements: list, events: list, blobs: dict[str, bytes], planned: set[str]) -> None:
    """Add one source's runs to the pending transaction (conflicts raise before any write)."""
    for row in store.all_runs():
        run_id = row["run_id"]
        source_rows = store.raw_events(run_id)
        if run_id in planned:
            raise MergeConflict(f"run {run_id} is in more than one of the stores being merged "
                                f"(again in {store.path}); merge them one at a time to see which holds what")
        existing = target.raw_events(run_id) if target.run(run_id) is not None else None
        if existing is None:
            statements.append((f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(RUN_COLUMNS))})", tuple(row[c] for c in RUN_COLUMNS)))
            new_rows = source_rows
            report.copied.append(run_id)
        else:
            prefix = len(existing)
            same = [(r["seq"], r["hash"]) for r in existing] == [(r["seq"], r["hash"]) for r in source_rows[:prefix]]
            if not same or len(source_rows) < prefix:
                if on_conflict == "skip":
                    report.conflicts.append(run_id)
                    continue
                raise MergeConflict(f"run {run_id} from {store.path} is already in {target.path} with a "
                                    "different history: refusing to merge (nothing was written)")
            new_rows = source_rows[prefix:]
            target_row = target.run(run_id)
            listing = tuple(row[c] for c in ("status", "stop_reason", "answer_preview", "sealed_hash"))
            if not new_rows and listing == tuple(target_row[c] for c in ("status", "stop_reason", "answer_preview",
                                                                         "sealed_hash")):
                report.already.append(run_id)
                planned.add(run_id)
                continue
            report.extended.append(run_id)
        planned.add(run_id)
        events.extend((r["run_id"], r["seq"], r["type"], r["body"], r["prev_hash"], r["hash"]) for r in new_rows)
        for seal in store.seals(run_id):
            statements.append(("INSERT OR IGNORE INTO seals (run_id, seq, hash) VALUES (?, ?, ?)",
                               (run_id, seal["seq"], seal["hash"])))
        if existing is not None:
            statements.append(("UPDATE runs SET status=?, stop_reason=?, answer_preview=?, sealed_hash=?, owner=? "
                               "WHERE run_id=?", (row["status"], row["stop_reason"], row["answer_preview"],
                                                  row["sealed_hash"], row["owner"], run_id)))
        for digest in (ref for row in new_rows for ref in blob_refs(json.loads(row["body"]))):
            if digest not in blobs:
                data = store.blob_bytes(digest)
                if data is not None:  # a missing blob is copied as missing: verify names it
                    blobs[digest] = data


