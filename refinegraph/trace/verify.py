"""Recompute a run's hash chain and name the first event that does not hold.

`verify_run` checks one run; `verify_store` every run of a store, after the database's own
check of its files (SQLite's quick_check). A run that cannot be read fails as unreadable,
naming why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pydantic import ValidationError

from refinegraph.events import parse_event
from refinegraph.trace.chain import blob_refs, content_digest, event_hash, genesis_hash
from refinegraph.trace.store import BaseTraceStore, TraceStoreError

UNSEALED_STATUSES = ("running", "interrupted", "awaiting_approval")


@dataclass
class VerifyReport:
    run_id: str
    ok: bool
    events: int
    sealed: bool
    problem: str | None = None
    bad_seq: int | None = None
    notes: list[str] = field(default_factory=list)


def verify_run(store: BaseTraceStore, run_id: str) -> VerifyReport:
    """Check sequence, links, hashes, event schema, blobs and the run's seal."""
    try:
        return _verify_chain(store, run_id)
    except TraceStoreError as exc:
        return VerifyReport(run_id, False, 0, False, f"the run cannot be read: {exc}")


def _verify_chain(store: BaseTraceStore, run_id: str) -> VerifyReport:
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
    elif run["status"] not in UNSEALED_STATUSES:
        return bad(len(rows), f"the run is listed as {run['status']} but is not sealed: its end was removed")
    elif run["status"].startswith("awaiting_"):  # paused by interrupt(): refinegraph.runs.execute._waiting
        report.notes.append(f"run is not sealed: {run['status']} (it waits on a person)")
    else:
        report.notes.append(f"run is not sealed ({run['status']}: still running, or stopped before its end: "
                            "resume it)")
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


@dataclass
class StoreReport:
    """Every run of a store checked, after the database's own check of its files."""

    location: str
    runs: list[VerifyReport] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    """What the database's integrity check found (SQLite: quick_check lines)."""
    unreadable: str | None = None
    """Why the store's run listing cannot be read, if it cannot."""
    unlisted: list[str] = field(default_factory=list)
    """Runs with events but no listing: a `runs` row was deleted around the store."""

    @property
    def failed(self) -> list[VerifyReport]:
        return [r for r in self.runs if not r.ok]

    @property
    def ok(self) -> bool:
        return not (self.damage or self.unreadable or self.failed or self.unlisted)


def verify_store(store: BaseTraceStore) -> StoreReport:
    """The database's integrity check, then `verify_run` on every run of `store`."""
    report = StoreReport(store.location, damage=store.integrity_problems())
    try:
        run_ids = [row["run_id"] for row in store.all_runs()]
        report.unlisted = [row["run_id"] for row in store._query(
            "SELECT DISTINCT run_id FROM events WHERE run_id NOT IN (SELECT run_id FROM runs) ORDER BY run_id")]
    except TraceStoreError as exc:
        report.unreadable = str(exc)
        return report
    report.runs = [verify_run(store, run_id) for run_id in run_ids]
    return report
