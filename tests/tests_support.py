"""Small readers of a stored trace, shared by tests."""

from __future__ import annotations


def critiques(store, run_id):
    return store.events(run_id, types={"critique"})


def event_types(store, run_id):
    return [e["type"] for e in store.events(run_id)]
