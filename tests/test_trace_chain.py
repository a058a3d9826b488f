"""The hash chain: every edit, deletion, reordering or splice is detected and named, on
SQLite and on PostgreSQL (edits go around the append-only triggers, as a superuser would)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from refinegraph.cli.app import app
from refinegraph.events import Fallback, NodeFinished, NodeStarted, RunFinished, RunStarted
from refinegraph.trace.store import BaseTraceStore, TraceStoreError, TraceWriter
from refinegraph.trace.verify import verify_run

pytestmark = pytest.mark.both_stores


def write_run(store: BaseTraceStore, run_id: str, n_middle: int = 5) -> int:
    store.create_run(run_id, "self-refine", "task")
    writer = TraceWriter(store, run_id)
    writer.append(RunStarted(graph="self-refine", input={"task": "t"}))
    for i in range(n_middle):
        writer.append(NodeStarted(node=f"n{i}"))
        writer.append(Fallback(kind="k", reason=f"reason {i}", detail="x" * i))
        writer.append(NodeFinished(node=f"n{i}", duration_ms=float(i)))
    writer.append(RunFinished(answer="42", stop_reason="done", usage={}, model_calls=0, cache_hits=0))
    writer.seal("finished", "done", "42")
    return writer.next_seq


def test_intact_run_verifies(store):
    count = write_run(store, "r1")
    report = verify_run(store, "r1")
    assert report.ok and report.sealed and report.events == count


def test_store_refuses_update_and_delete(store):
    """The database itself refuses, on the store's own connection (its tables' owner)."""
    write_run(store, "r1")
    for sql in ("UPDATE events SET body = body || ' ' WHERE run_id='r1' AND seq=2",
                "DELETE FROM events WHERE run_id='r1' AND seq=2",
                "UPDATE seals SET hash='0' WHERE run_id='r1'", "DELETE FROM seals WHERE run_id='r1'"):
        with pytest.raises(TraceStoreError, match="append-only"):
            store._execute(sql)
    assert verify_run(store, "r1").ok


def test_one_changed_byte_is_named(store, tamper):
    write_run(store, "r1")
    [(body,)] = tamper("SELECT body FROM events WHERE run_id='r1' AND seq=5")
    changed = body.replace("reason 1", "reason 7")
    assert changed != body and len(changed) == len(body)
    tamper("UPDATE events SET body=? WHERE run_id='r1' AND seq=5", (changed,))
    report = verify_run(store, "r1")
    assert not report.ok and report.bad_seq == 5 and "altered" in report.problem


def test_deleted_event_is_named(store, tamper):
    write_run(store, "r1")
    tamper("DELETE FROM events WHERE run_id='r1' AND seq=3")
    report = verify_run(store, "r1")
    assert not report.ok and report.bad_seq == 3 and "missing" in report.problem


def test_deleted_last_event_breaks_the_seal(store, tamper):
    count = write_run(store, "r1")
    tamper("DELETE FROM events WHERE run_id='r1' AND seq=?", (count - 1,))
    report = verify_run(store, "r1")
    assert not report.ok and report.bad_seq == count - 1 and "sealed" in report.problem


def test_altered_blob_is_named(store, tamper):
    from refinegraph.events import LLMCall
    store.create_run("r1", "g", "t")
    writer = TraceWriter(store, "r1")
    ref = writer.put_blob({"texts": ["hello"], "finish_reasons": ["stop"]})
    writer.append(LLMCall(model="m", role="solver", backend="scripted", source="backend", params={},
                          call_key="c", cache_keys=["k"], request_blob=writer.put_blob({"messages": []}),
                          response_blob=ref))
    assert verify_run(store, "r1").ok
    tamper("UPDATE blobs SET data=? WHERE digest=?", (b'{"texts":["HELLO"]}', ref))
    report = verify_run(store, "r1")
    assert not report.ok and report.bad_seq == 0 and "blob" in report.problem


def test_run_spliced_from_another_store_is_detected(make_store):
    a, b = make_store.new(), make_store.new()
    write_run(a, "r1")
    write_run(b, "r2", n_middle=2)
    # Copy r2's chain into a under r1's id, replacing r1's events.
    make_store.tamper(a, "DELETE FROM events WHERE run_id='r1'")
    for row in b.raw_events("r2"):
        make_store.tamper(a, "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                   ("r1", row["seq"], row["type"], row["body"], row["prev_hash"], row["hash"]))
    report = verify_run(a, "r1")
    assert not report.ok and report.bad_seq == 0


MUTATIONS = st.sampled_from(["edit", "delete", "swap"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_middle=st.integers(1, 6), mutation=MUTATIONS, data=st.data())
def test_any_single_mutation_is_detected_at_its_event(store, tamper, n_middle, mutation, data):
    run = f"r-{uuid.uuid4().hex[:8]}"  # one store for every example: each writes a run of its own
    count = write_run(store, run, n_middle=n_middle)
    i = data.draw(st.integers(0, count - 1), label="event")
    if mutation == "edit":
        [(body,)] = tamper("SELECT body FROM events WHERE run_id=? AND seq=?", (run, i))
        pos = data.draw(st.integers(0, len(body) - 1), label="position")
        replacement = "A" if body[pos] != "A" else "B"
        tamper("UPDATE events SET body=? WHERE run_id=? AND seq=?", (body[:pos] + replacement + body[pos + 1:], run, i))
        expected = i
    elif mutation == "delete":
        tamper("DELETE FROM events WHERE run_id=? AND seq=?", (run, i))
        expected = i
    else:
        j = data.draw(st.integers(0, count - 1).filter(lambda j: j != i), label="other")
        lo, hi = sorted((i, j))
        rows = {r["seq"]: r for r in store.raw_events(run)}
        for seq, other in ((lo, hi), (hi, lo)):
            tamper("UPDATE events SET body=?, type=?, prev_hash=?, hash=? WHERE run_id=? AND seq=?",
                   (rows[other]["body"], rows[other]["type"], rows[other]["prev_hash"], rows[other]["hash"], run, seq))
        expected = lo
    report = verify_run(store, run)
    assert not report.ok
    assert report.bad_seq == expected, report.problem


def test_cli_verify_exit_codes(store, tamper):
    write_run(store, "abc123")
    runner = CliRunner()
    ok = runner.invoke(app, ["trace", "verify", "abc1"])
    assert ok.exit_code == 0 and "chain holds" in ok.output
    tamper("DELETE FROM events WHERE run_id='abc123' AND seq=4")
    bad = runner.invoke(app, ["trace", "verify", "abc123"])
    assert bad.exit_code == 1 and "event 4" in bad.output


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_program_blob_missing_or_altered_is_named(store, tamper, damage):
    """Every blob an event refers to is checked, not only a model call's request and response."""
    from refinegraph.events import CodeExec

    store.create_run("code", "code-filter", "task")
    writer = TraceWriter(store, "code")
    writer.append(RunStarted(graph="code-filter", input={"task": "t"}))
    ref = writer.put_blob({"program": "print(1)"})
    writer.append(CodeExec(candidate=0, status="ok", passed=True, isolation="bwrap", program_blob=ref))
    writer.flush()
    assert verify_run(store, "code").ok
    if damage == "missing":
        tamper("DELETE FROM blobs WHERE digest=?", (ref,))
    else:
        tamper("UPDATE blobs SET data=? WHERE digest=?", (b'{"program":"import os"}', ref))
    report = verify_run(store, "code")
    assert not report.ok and report.bad_seq == 1
    assert ("which is missing" if damage == "missing" else "was altered") in report.problem


@pytest.mark.parametrize("body", ["[1]", "1", '"x"', "null"])
def test_an_unlinked_event_whose_body_is_not_an_object_is_named(store, tamper, body):
    write_run(store, "r1")
    tamper("UPDATE events SET body=?, prev_hash='0' WHERE run_id='r1' AND seq=3", (body,))
    report = verify_run(store, "r1")
    assert not report.ok and report.bad_seq == 3 and "does not link to event 2" in report.problem


def test_a_run_whose_listing_was_deleted_is_named_by_verify(store, tamper):
    """A `runs` row deleted around the store (its events remain) is named by verify of the
    whole store, rather than the run silently leaving the listing."""
    from typer.testing import CliRunner

    from refinegraph.cli.app import app
    from refinegraph.trace.verify import verify_store

    write_run(store, "r1")
    write_run(store, "r2")
    tamper("DELETE FROM runs WHERE run_id='r1'")
    report = verify_store(store)
    assert report.unlisted == ["r1"] and not report.ok
    result = CliRunner().invoke(app, ["trace", "verify"])
    assert result.exit_code == 1 and "FAILED run r1: it has events but no listing" in result.output
