"""Merging and copying trace stores: the shards a batch's Ray workers wrote become one
store, and `refinegraph trace copy` moves runs between any two stores (SQLite or
PostgreSQL, either way). One mechanism: the runs to copy become one `Batch` that the
target commits like any writer's.

Reading goes through the source's database, so copying a live SQLite store (runs still
being written) is safe, unlike `cp`: a run still going is copied as far as it is
committed, and a later copy extends it. Each run's listing is read before its seals and
its seals before its events, so what is copied always verifies.

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
from refinegraph.trace.store import RUN_COLUMNS, BaseTraceStore, Batch, open_store
from refinegraph.trace.verify import verify_run

StoreLike = BaseTraceStore | str | Path
"""A store object, or where one is: a path, sqlite:///path or postgresql://..."""


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


LISTING = ("status", "stop_reason", "answer_preview", "sealed_hash")


def run_ids(store: BaseTraceStore) -> list[str]:
    """Every run id the store holds, oldest first."""
    return [row["run_id"] for row in store.all_runs()]


def _open(source: StoreLike) -> tuple[BaseTraceStore, bool]:
    if isinstance(source, BaseTraceStore):
        return source, False
    return open_store(source), True


def _identity(store: BaseTraceStore) -> str:
    """What names one store whatever way it was opened (a SQLite file by its real path)."""
    return str(Path(store.location).resolve()) if store.kind == "sqlite" else store.location


def merge_stores(sources: Iterable[StoreLike], target: StoreLike, *,
                 on_conflict: Literal["refuse", "skip"] = "refuse", verify: bool = True) -> MergeReport:
    """Copy every run of `sources` into `target` (see the module docstring); then, with
    `verify`, check each run written with `verify_run` and list any that fails."""
    report = MergeReport()
    target_store, close_target = _open(target)
    batch = Batch()
    planned: set[str] = set()  # run ids seen in this merge's sources
    try:
        for source in sources:
            store, close = _open(source)
            try:
                if _identity(store) == _identity(target_store):
                    raise ValueError(f"cannot merge {store.location} into itself")
                _plan_store(store, target_store, on_conflict, report, batch, planned)
            finally:
                if close:
                    store.close()
        target_store.commit(batch)
        report.events, report.blobs = len(batch.events), len(batch.blobs)
        if verify:
            for run_id in report.copied + report.extended:
                result = verify_run(target_store, run_id)
                if not result.ok:
                    report.unverified[run_id] = f"event {result.bad_seq}: {result.problem}"
        return report
    finally:
        if close_target:
            target_store.close()


def copy_store(source: StoreLike, target: StoreLike, *, on_conflict: Literal["refuse", "skip"] = "refuse",
               verify: bool = True) -> MergeReport:
    """Every run of `source` into `target`, verified there (`refinegraph trace copy`)."""
    return merge_stores([source], target, on_conflict=on_conflict, verify=verify)


def _plan_store(store: BaseTraceStore, target: BaseTraceStore, on_conflict: str, report: MergeReport,
                batch: Batch, planned: set[str]) -> None:
    """Add one source's runs to the pending batch (conflicts raise before any write)."""
    for row in store.all_runs():
        run_id = row["run_id"]
        seals = store.seals(run_id)  # listing, then seals, then events: a run sealed meanwhile stays whole
        source_rows = store.raw_events(run_id)
        if run_id in planned:
            raise MergeConflict(f"run {run_id} is in more than one of the stores being merged "
                                f"(again in {store.location}); merge them one at a time to see which holds what")
        target_row = target.run(run_id)
        existing = target.raw_events(run_id) if target_row is not None else None
        if existing is None:
            batch.runs.append({c: row[c] for c in RUN_COLUMNS})
            new_rows = source_rows
            report.copied.append(run_id)
        else:
            prefix = len(existing)
            same = [(r["seq"], r["hash"]) for r in existing] == [(r["seq"], r["hash"]) for r in source_rows[:prefix]]
            if not same or len(source_rows) < prefix:
                if on_conflict == "skip":
                    report.conflicts.append(run_id)
                    continue
                raise MergeConflict(f"run {run_id} from {store.location} is already in {target.location} with a "
                                    "different history: refusing to merge (nothing was written)")
            new_rows = source_rows[prefix:]
            if not new_rows and tuple(row[c] for c in LISTING) == tuple(target_row[c] for c in LISTING):
                report.already.append(run_id)
                planned.add(run_id)
                continue
            report.extended.append(run_id)
        planned.add(run_id)
        batch.events.extend((r["run_id"], r["seq"], r["type"], r["body"], r["prev_hash"], r["hash"]) for r in new_rows)
        batch.seals.extend((run_id, seal["seq"], seal["hash"]) for seal in seals)
        if existing is not None:
            batch.listings.append({"run_id": run_id, **{c: row[c] for c in (*LISTING, "owner")}})
        for digest in (ref for r in new_rows for ref in blob_refs(json.loads(r["body"]))):
            if digest not in batch.blobs:
                data = store.blob_bytes(digest)
                if data is not None:  # a missing blob is copied as missing: verify names it
                    batch.blobs[digest] = data
