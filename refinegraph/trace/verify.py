"""Recompute a run's hash chain and name the first event that does not hold.

`verify_run` checks one run; `verify_store` every run of a store, with what the store's
recoveries from damage (refinegraph.trace.recovery) say each run lost. A run that cannot
be read (the file is damaged and was not recovered) fails as unreadable, naming why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from refinegraph.events import parse_event
from refinegraph.trace.chain import blob_refs, content_digest, event_hash, genesis_hash
from refinegraph.trace.store import TraceStore, TraceStoreError


class TraceMark(NamedTuple):
    """What a run's latest checkpoint says of its trace (refinegraph.runner.trace_marks)."""

    events: int
    """How many events the trace held when the checkpoint was written."""
    store: str | None
    """The store the trace was written to (its resolved path), where recorded."""


@dataclass
class VerifyReport:
    run_id: str
    ok: bool
    events: int
    sealed: bool
    problem: str | None = None
    bad_seq: int | None = None
    notes: list[str] = field(default_factory=list)


def verify_run(store: TraceStore, run_id: str, reached: int | None = None,
               recoveries: list[dict] | None = None) -> VerifyReport:
    """Check sequence, links, hashes, event schema, blobs and the run's seal; where the
    store was recovered from damage that touched this run, say so (in the problem too).

    `reached`: how many events the run's trace held when its latest checkpoint was written
    (refinegraph.runner.trace_marks): a chain shorter than that lost its tail, which no
    hash can show once the seal went with it (a cut -wal drops whole commits).
    `recoveries`: the store's, when the caller has read them already (verify_store).
    """
    try:
        report = _verify_chain(store, run_id)
    except TraceStoreError as exc:
        return VerifyReport(run_id, False, 0, False, f"the run cannot be read: {exc}")
    try:
        notes = recovery_notes(store.recoveries() if recoveries is None else recoveries, run_id)
    except TraceStoreError as exc:
        notes = [f"the store's record of its recoveries cannot be read: {exc}"]
    if report.ok and reached is not None and report.events < reached:
        report.ok, report.bad_seq = False, report.events
        report.problem = (f"event{'s' if reached - report.events > 1 else ''} {report.events}"
                          f"{f'-{reached - 1}' if reached - report.events > 1 else ''} missing: the run's checkpoint "
                          f"was written when its trace reached event {reached - 1}; the chain now ends at event "
                          f"{report.events - 1}: events were cut (a damaged store?)")
    report.notes.extend(notes)
    if not report.ok and notes:
        report.problem = f"{report.problem} [{'; '.join(notes)}]"
    return report


def _verify_chain(store: TraceStore, run_id: str) -> VerifyReport:
    run = store.run(run_id)
    rows = store.raw_events(run_id)

    def bad(seq: int | None, problem: str) -> VerifyReport:
        return VerifyReport(run_id, False, len(rows), bool(run and run["sealed_hash"]), problem, seq)

    if run is None:
        return bad(None, "run not found in the store")
    prev = genesis_hash(run_id)
    for expected_seq, row in enumerate(rows):
        seq = row["seq"]
        if seq != expected_seq:
            return bad(expected_seq, f"event {expected_seq} is missing (next stored event is {seq})")
        if row["prev_hash"] != prev:
            return bad(seq, _unlinked(run_id, seq, row))
        if event_hash(prev, row["body"]) != row["hash"]:
            return bad(seq, f"event {seq} ({row['type']}) was altered: its hash does not match its content")
        try:
            body = json.loads(row["body"])
            event = parse_event(body)
        except (ValueError, ValidationError) as exc:
            return bad(seq, f"event {seq} is not a valid event: {str(exc).splitlines()[0]}")
        if event.run_id != run_id or event.seq != seq or event.type != row["type"]:  # type: ignore[attr-defined]
            return bad(seq, f"event {seq} claims run {event.run_id} seq {event.seq}: moved from elsewhere")
        for ref in blob_refs(body):  # request, response, program: every blob the event refers to
            data = store.blob_bytes(ref)
            if data is None:
                return bad(seq, f"event {seq} refers to blob {ref}, which is missing")
            if content_digest(data) != ref:
                return bad(seq, f"blob {ref} of event {seq} was altered")
        prev = row["hash"]
    sealed = bool(run["sealed_hash"])
    hashes = {row["seq"]: row["hash"] for row in rows}
    for seal in store.seals(run_id):
        if seal["seq"] >= len(rows):
            first = f"event {len(rows)} is missing" if seal["seq"] == len(rows) else \
                f"events {len(rows)}-{seal['seq']} are missing"
            return bad(len(rows), f"{first}: the run was sealed at event {seal['seq']} when it ended, and its "
                                  f"chain now ends at event {len(rows) - 1}: events were cut")
        if hashes.get(seal["seq"]) != seal["hash"]:
            return bad(seal["seq"], f"event {seal['seq']} is missing or is not the event the run was sealed "
                                    "with when it ended: events were cut or replaced")
    report = VerifyReport(run_id, True, len(rows), sealed)
    if sealed:
        last = json.loads(rows[-1]["body"]) if rows else None
        if last is None or last["type"] != "run_finished":
            return bad(len(rows), f"event {len(rows)} is missing: the run is sealed, but its chain "
                                  f"ends at event {len(rows) - 1} ({last['type'] if last else 'none'})")
        if run["sealed_hash"] != prev:
            return bad(len(rows) - 1, "the run's seal does not match its last event: the chain was cut or replaced")
        expected_status = "error" if last["stop_reason"] == "error" else "finished"
        if (run["stop_reason"], run["status"], run["answer_preview"]) != (
                last["stop_reason"], expected_status, (last["answer"] or "")[:200]):
            return bad(len(rows) - 1, "the run's listing (status, stop reason or answer) differs from its "
                                      "run_finished event")
    elif run["status"].startswith("awaiting_"):  # paused by interrupt(): refinegraph.runner._waiting
        report.notes.append(f"run is not sealed: {run['status']} (it waits on a person)")
    elif run["status"] != "running":
        return bad(len(rows), f"the run is listed as {run['status']} but is not sealed: its end was removed")
    else:
        report.notes.append("run is not sealed (still running, or interrupted: resume it)")
    return report


def _unlinked(run_id: str, seq: int, row: dict) -> str:
    """Why event `seq` does not link to its predecessor, as far as its own body tells."""
    try:
        body = json.loads(row["body"])
    except ValueError:
        body = {}
    if not isinstance(body, dict):  # edited into another JSON value: it claims nothing
        body = {}
    claimed_run, claimed_seq = body.get("run_id"), body.get("seq")
    if claimed_run is not None and claimed_run != run_id:
        return (f"event {seq} is event {claimed_seq} of run {claimed_run}: events were spliced from another run "
                "(or another store)")
    if claimed_seq is not None and claimed_seq != seq:
        return f"event {seq} holds event {claimed_seq} ({row['type']}): events were reordered"
    if seq == 0:
        return "event 0 does not start this run's chain: it was replaced, or spliced from another run"
    return (f"event {seq} does not link to event {seq - 1}: event {seq - 1} was replaced, or events were removed "
            "or spliced")


def _ranges(seqs: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    parts, start = [], None
    for i, seq in enumerate(seqs):
        if start is None:
            start = seq
        if i + 1 == len(seqs) or seqs[i + 1] != seq + 1:
            parts.append(str(start) if start == seq else f"{start}-{seq}")
            start = None
    return ", ".join(parts)


def recovery_notes(recoveries: list[dict], run_id: str) -> list[str]:
    """What each recovery of the store says `run_id` lost, in words."""
    notes = []
    for rec in recoveries:
        detail = rec["detail"]
        parts = []
        lost = detail.get("events_lost", {}).get(run_id)
        if lost:
            parts.append(f"event{'s' if len(lost) > 1 else ''} {_ranges(lost)} lost")
        unproven = detail.get("events_unproven", {}).get(run_id)
        if unproven:
            parts.append(f"event{'s' if len(unproven) > 1 else ''} {_ranges(unproven)} did not match "
                         f"{'their hashes' if len(unproven) > 1 else 'its hash'} when recovered (damaged, or "
                         "edited before the damage)")
        if run_id in detail.get("runs_listed_again", []):
            parts.append("its listing was lost and rebuilt from its events")
        if run_id in detail.get("runs_touched", []):
            parts.append("it had rows on the cut part of the -wal")
        if parts:
            notes.append(f"damage: {', '.join(parts)} (store recovered at {rec['at']}; the damaged file is kept "
                         f"as {rec['damaged_file']})")
    return notes


@dataclass
class StoreReport:
    """Every run of a store checked, and the store's damage and recoveries."""

    path: str
    runs: list[VerifyReport] = field(default_factory=list)
    recoveries: list[dict] = field(default_factory=list)
    recovered_now: dict | None = None
    """The recovery that opening the store made just now, if any."""
    damage: str | None = None
    """Damage found on open and not recovered (other processes have the store open)."""
    unreadable: str | None = None
    """Why the store's run listing cannot be read, if it cannot."""
    runs_lost: list[str] = field(default_factory=list)
    """Runs a recovery found named in the store (by an index page) with none of their rows
    left, and runs the checkpoint file has checkpoints of that the store does not list."""

    @property
    def failed(self) -> list[VerifyReport]:
        return [r for r in self.runs if not r.ok]

    @property
    def ok(self) -> bool:
        return not (self.damage or self.unreadable or self.runs_lost or self.failed)


def verify_store(store: TraceStore, marks: dict[str, TraceMark] | None = None) -> StoreReport:
    """`verify_run` on every run of `store`, with its damage and recoveries. `marks`
    (refinegraph.runner.trace_marks): a listed run's chain must reach its mark; a run with
    a mark in this store that the store does not list is lost."""
    report = StoreReport(str(store.path), recovered_now=store.recovered, damage=store.damage)
    try:
        report.recoveries = store.recoveries()
        run_ids = [row["run_id"] for row in store.all_runs()]
    except TraceStoreError as exc:
        report.unreadable = str(exc)
        return report
    listed = set(run_ids)
    marks = marks or {}
    here = str(Path(store.path).resolve())
    report.runs_lost = sorted({run for rec in report.recoveries for run in rec["detail"].get("runs_lost", [])
                               if run not in listed} | {run for run, mark in marks.items()
                                                        if run not in listed and mark.store == here})
    report.runs = [verify_run(store, run_id, mark_reach(marks.get(run_id), store), report.recoveries)
                   for run_id in run_ids]
    return report


def mark_reach(mark: TraceMark | None, store: TraceStore) -> int | None:
    """The events `mark` says the run's trace held, when the mark is of this store (or names
    none): a checkpoint file may serve runs of several stores, and a run copied here from
    another store mid-run is not cut because it is shorter than the other store's mark."""
    if mark is None or mark.store not in (None, str(Path(store.path).resolve())):
        return None
    return mark.events
