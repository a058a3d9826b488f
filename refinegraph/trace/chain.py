"""The hash chain: canonical JSON and how each event's hash covers its predecessor."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from refinegraph.trace.redact import redact_json


def canonical_json(data: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _compact_json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_body(event: BaseModel) -> str:
    """An event's stored text: its JSON, fields in the order its class declares them, with
    secrets redacted (refinegraph.trace.redact).

    The hash covers exactly this stored text, so `verify` never re-serializes; blobs use
    `redacted_json` instead, since their digest is their identity.
    """
    return redact_json(event.model_dump_json(), _compact_json)


def redacted_json(data: Any) -> str:
    """`canonical_json` of `data` with secrets redacted: what a blob stores and what a
    replay-cache key hashes (so a replay from the redacted trace finds the same keys)."""
    return redact_json(canonical_json(data), canonical_json)


def genesis_hash(run_id: str) -> str:
    """The `prev_hash` of a run's first event, bound to its run id."""
    return hashlib.sha256(f"refinegraph-run:{run_id}".encode()).hexdigest()


def event_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + body.encode()).hexdigest()


def content_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_refs(body: dict[str, Any]) -> list[str]:
    """Digests an event body refers to: any `*_blob` field, and each item of any `*_blobs` list."""
    refs: list[str] = []
    for key, value in body.items():
        if key.endswith("_blob") and isinstance(value, str) and value:
            refs.append(value)
        elif key.endswith("_blobs") and isinstance(value, list):
            refs.extend(v for v in value if isinstance(v, str) and v)
    return refs
