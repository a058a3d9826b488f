"""Recompute a run's hash chain and name the first event that does not hold."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pydantic import ValidationError

from refinegraph.events import parse_event
from refinegraph.trace.chain import content_digest, event_hash, genesis_hash
from refinegraph.trace.store import TraceStore


@dataclass
class VerifyReport:
    run_id: str
    ok: bool
    events: int
    sealed: bool
    problem: str | None = None
    bad_seq: int | None = None
    notes: list[str] = field(default_factory=list)


def verify_run(store: TraceStore, run_id: str) -> VerifyReport:
    """Check sequence, links, hashes, event schema, blobs and the run's seal."""
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
            return bad(seq, f"event {seq} does not link to event {seq - 1}: events were removed, "
                            "reordered or spliced")
        if event_hash(prev, row["body"]) != row["hash"]:
            return bad(seq, f"event {seq} ({row['type']}) was altered: its hash does not match its content")
        try:
            body = json.loads(row["body"])
            event = parse_event(body)
        except (ValueError, ValidationError) as exc:
            return bad(seq, f"event {seq} is not a valid event: {str(exc).splitlines()[0]}")
        if event.run_id != run_id or event.seq != seq or event.type != row["type"]:  # type: ignore[attr-defined]
            return bad(seq, f"event {seq} claims run {event.run_id} seq {event.seq}: moved from elsewhere")
        for ref in (body.get("request_blob"), body.get("response_blob")):
            if ref:
                data = store.blob_bytes(ref)
                if data is None:
                    return bad(seq, f"event {seq} refers to blob {ref}, which is missing")
                if content_digest(data) != ref:
                    return bad(seq, f"blob {ref} of event {seq} was altered")
        prev = row["hash"]
    sealed = bool(run["sealed_hash"])
    hashes = {row["seq"]: row["hash"] for row in rows}
    for seal in store.seals(run_id):
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
    elif run["status"] != "running":
        return bad(len(rows), f"the run is listed as {run['status']} but is not sealed: its end was removed")
    else:
        report.notes.append("run is not sealed (still running, or interrupted: resume it)")
    return report
