"""OpenTelemetry export: spans for run, nodes and model calls with gen_ai.* attributes and
decision events, from a recorded trace and live; the same structure either way.

Runs use the ScriptedModel test double.
"""

from __future__ import annotations

import json

import pytest

from needs import needs

pytest.importorskip("opentelemetry.sdk", reason=needs("an optional package", "opentelemetry-sdk is not installed "
                                                                            "(the otel and dev extras install it)"))

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from refinegraph import run  # noqa: E402
from refinegraph.models import ScriptedModel  # noqa: E402
from refinegraph.trace import store as trace_store  # noqa: E402
from refinegraph.trace.otel import (  # noqa: E402
    OtelUnavailable,
    disable_live,
    enable_live,
    export_run,
    flatten,
    ts_ns,
)

from conftest import scripted_by_role, verdict  # noqa: E402

SC_TEXTS = ["The answer is 12.", "The answer is 7", "So 12.", "The answer is 12", "no idea at all"]


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


async def sc_run(store) -> str:
    result = await run("self-consistency", "What is 3*4?", params={"n": 5}, store=store,
                       models={"local": ScriptedModel(SC_TEXTS, name="local")}, checkpoint=False)
    return result.run_id


async def refine_run(store) -> str:
    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    result = await run("self-refine", "Explain why the sky is blue.", store=store, models={"local": model},
                       checkpoint=False)
    return result.run_id


def tree(spans) -> list[tuple[int, str]]:
    """(depth, name) of every span, parents first, siblings in start order."""
    by_id = {s.context.span_id: s for s in spans}
    children: dict[int | None, list] = {}
    for s in spans:
        children.setdefault(s.parent.span_id if s.parent else None, []).append(s)
    out: list[tuple[int, str]] = []

    def visit(parent: int | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: (x.start_time, x.context.span_id)):
            out.append((depth, s.name))
            visit(s.context.span_id, depth + 1)

    roots = [s for s in spans if s.parent is None or s.parent.span_id not in by_id]
    assert len(roots) == 1, [s.name for s in roots]  # one run span
    visit(None if roots[0].parent is None else roots[0].parent.span_id, 0)
    return out


def shape(spans) -> list[tuple]:
    """What must match between export and live: structure, attributes and span events."""
    by_id = {s.context.span_id: s for s in spans}
    out = []
    for s in sorted(spans, key=lambda x: (x.start_time, x.attributes.get("refinegraph.seq", -1))):
        parent = by_id[s.parent.span_id].name if s.parent and s.parent.span_id in by_id else None
        events = [(e.name, {k: v for k, v in e.attributes.items()}) for e in s.events]
        out.append((s.name, parent, s.kind, s.start_time, s.end_time, dict(s.attributes), events, s.status.status_code))
    return out


async def test_self_consistency_export(store):
    run_id = await sc_run(store)
    tp, exporter = provider()
    assert export_run(store, run_id, tp) == len(store.events(run_id))
    spans = exporter.get_finished_spans()
    assert tree(spans) == [(0, "invoke_workflow self-consistency"), (1, "sampler"), (2, "chat local"),
                           (1, "finish")]
    run_span = next(s for s in spans if s.name.startswith("invoke_workflow"))
    started, finished = store.events(run_id, types={"run_started"})[0], store.events(run_id, types={"run_finished"})[0]
    assert run_span.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert run_span.attributes["gen_ai.workflow.name"] == "self-consistency"
    assert run_span.attributes["refinegraph.run_id"] == run_id
    assert run_span.attributes["refinegraph.params.n"] == 5
    assert run_span.attributes["refinegraph.stop_reason"] == "done"
    assert run_span.attributes["gen_ai.usage.input_tokens"] == finished["usage"]["prompt_tokens"]
    assert run_span.attributes["gen_ai.usage.output_tokens"] == finished["usage"]["completion_tokens"]
    assert (run_span.start_time, run_span.end_time) == (ts_ns(started["ts"]), ts_ns(finished["ts"]))
    assert "refinegraph.input" not in run_span.attributes  # content is opt-in

    (call_event,) = store.events(run_id, types={"llm_call"})
    chat = next(s for s in spans if s.name == "chat local")
    assert chat.kind == SpanKind.CLIENT
    a = chat.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "local"
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "scripted"
    assert a["gen_ai.request.temperature"] == call_event["params"]["temperature"] == 0.7
    assert a["gen_ai.request.max_tokens"] == call_event["params"]["max_tokens"]
    assert a["gen_ai.request.choice.count"] == 5
    assert a["gen_ai.usage.input_tokens"] == call_event["prompt_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == call_event["completion_tokens"] > 0
    assert list(a["gen_ai.response.finish_reasons"]) == ["stop"] * 5
    assert chat.end_time == ts_ns(call_event["ts"])
    assert chat.end_time - chat.start_time == int(call_event["latency_ms"] * 1_000_000)
    assert "gen_ai.input.messages" not in a

    finish = next(s for s in spans if s.name == "finish")
    assert [e.name for e in finish.events] == ["vote", "stop"]
    vote = finish.events[0].attributes
    recorded = store.events(run_id, types={"vote"})[0]
    assert vote["refinegraph.winner"] == "12" and vote["refinegraph.agreement"] == recorded["agreement"]
    assert json.loads(vote["refinegraph.groups"]) == recorded["groups"]
    assert list(vote["refinegraph.failed"]) == [4]
    assert finish.events[0].timestamp == ts_ns(recorded["ts"])
    assert finish.events[1].attributes["refinegraph.reason"] == "done"


async def test_self_refine_export(store):
    run_id = await refine_run(store)
    tp, exporter = provider()
    export_run(store, run_id, tp, capture_content=True)
    spans = exporter.get_finished_spans()
    assert tree(spans) == [(0, "invoke_workflow self-refine"),
                           (1, "solver"), (2, "chat local"), (1, "critic"), (2, "chat local"), (1, "decide"),
                           (1, "refiner"), (2, "chat local"), (1, "critic"), (2, "chat local"), (1, "decide"),
                           (1, "finish")]
    critics = [s for s in spans if s.name == "critic"]
    assert [[e.name for e in c.events] for c in critics] == [["critique"], ["critique"]]
    assert [c.events[0].attributes["refinegraph.score"] for c in critics] == [4.0, 9.0]
    assert critics[1].events[0].attributes["refinegraph.done"] is True
    assert critics[0].events[0].attributes["refinegraph.criteria.correctness"] == 4.0
    refiner = next(s for s in spans if s.name == "refiner")
    assert [(e.name, e.attributes["refinegraph.iteration"]) for e in refiner.events] == [("refine", 1)]
    calls = store.events(run_id, types={"llm_call"})
    chats = sorted((s for s in spans if s.name == "chat local"), key=lambda s: s.attributes["refinegraph.seq"])
    assert [c.attributes["refinegraph.role"] for c in chats] == ["solver", "critic", "refiner", "critic"]
    assert [c.attributes["gen_ai.usage.input_tokens"] for c in chats] == [c["prompt_tokens"] for c in calls]
    assert [c.attributes["gen_ai.usage.output_tokens"] for c in chats] == [c["completion_tokens"] for c in calls]
    # opt-in content: the request and the response from the blobs
    outputs = json.loads(chats[2].attributes["gen_ai.output.messages"])
    assert outputs[0]["parts"][0]["content"] == "refiner answer 1" and outputs[0]["finish_reason"] == "stop"
    inputs = json.loads(chats[0].attributes["gen_ai.input.messages"])
    assert any("Explain why the sky is blue." in m["parts"][0]["content"] for m in inputs)
    run_span = next(s for s in spans if s.parent is None)
    assert run_span.attributes["refinegraph.answer"] == "refiner answer 1"
    total = store.events(run_id, types={"run_finished"})[0]["usage"]
    assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == total["prompt_tokens"]


@pytest.mark.parametrize("make_run", [sc_run, refine_run])
async def test_live_export_matches_export_afterwards(store, make_run):
    live_tp, live = provider()
    exporter = enable_live(live_tp)
    try:
        assert enable_live(live_tp) is exporter  # the same provider is not added twice
        run_id = await make_run(store)
    finally:
        disable_live(exporter)
    assert exporter not in trace_store.OBSERVERS and not exporter.open_runs
    after_tp, after = provider()
    export_run(store, run_id, after_tp)
    assert len(live.get_finished_spans()) == len(after.get_finished_spans()) > 3
    assert tree(live.get_finished_spans()) == tree(after.get_finished_spans())
    assert shape(live.get_finished_spans()) == shape(after.get_finished_spans())


async def test_live_run_span_is_a_child_of_the_callers_span(store):
    tp, exporter = provider()
    live = enable_live(tp)
    try:
        with tp.get_tracer("app").start_as_current_span("request") as outer:
            await sc_run(store)
    finally:
        disable_live(live)
    spans = exporter.get_finished_spans()
    run_span = next(s for s in spans if s.name.startswith("invoke_workflow"))
    assert run_span.parent.span_id == outer.get_span_context().span_id
    assert run_span.context.trace_id == outer.get_span_context().trace_id


async def test_env_enables_live_export_on_the_global_provider(store, monkeypatch):
    from opentelemetry import trace

    tp, exporter = provider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tp)
    monkeypatch.setenv("REFINEGRAPH_OTEL", "1")
    try:
        run_id = await sc_run(store)
    finally:
        disable_live()
    names = [name for _, name in tree(exporter.get_finished_spans())]
    assert names == ["invoke_workflow self-consistency", "sampler", "chat local", "finish"]
    assert exporter.get_finished_spans()[-1].attributes["refinegraph.run_id"] == run_id


async def test_failing_observer_does_not_break_the_run(store, caplog):
    def broken(writer, event):
        raise RuntimeError("collector down")

    trace_store.OBSERVERS.append(broken)
    try:
        run_id = await sc_run(store)
    finally:
        trace_store.OBSERVERS.remove(broken)
    assert store.run(run_id)["status"] == "finished"
    assert "trace observer" in caplog.text and "collector down" in caplog.text


async def test_unfinished_run_is_closed_at_its_last_event(store):
    run_id = await sc_run(store)
    # a trace cut after the vote (as an interrupted run leaves it): export ends what is open
    events = store.events(run_id)
    cut = next(e["seq"] for e in events if e["type"] == "vote")

    class Cut:
        def events(self, rid, types=None):
            return [e for e in events if e["seq"] <= cut]

        def __getattr__(self, name):
            return getattr(store, name)

    tp, exporter = provider()
    export_run(Cut(), run_id, tp)  # type: ignore[arg-type]
    spans = exporter.get_finished_spans()
    assert [n for _, n in tree(spans)] == ["invoke_workflow self-consistency", "sampler", "chat local", "finish"]
    run_span = next(s for s in spans if s.parent is None)
    assert run_span.attributes["refinegraph.finished"] is False
    assert run_span.end_time == ts_ns(events[cut]["ts"])


def test_flatten_keeps_what_otel_accepts():
    flat = flatten({"a": None, "b": {"c": 1, "d": {"e": "x"}}, "l": [1, 2], "mixed": [1, "a"], "none": [None],
                    "groups": [{"key": "1"}], "empty": {}, "t": True})
    assert flat == {"refinegraph.b.c": 1, "refinegraph.b.d.e": "x", "refinegraph.l": [1, 2],
                    "refinegraph.mixed": '[1, "a"]', "refinegraph.none": "[null]",
                    "refinegraph.groups": '[{"key": "1"}]', "refinegraph.empty": "{}", "refinegraph.t": True}


def test_missing_opentelemetry_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_otel(name, *args, **kwargs):
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    with pytest.raises(OtelUnavailable, match=r"pip install 'refinegraph\[otel\]'"):
        enable_live()


async def test_a_resumed_run_exports_as_a_second_run_span_live_and_afterwards(store, monkeypatch):
    from refinegraph import RunFailed, resume
    from refinegraph.graphs import self_refine
    from refinegraph.runner import clear_compiled_graphs

    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    real_decide = self_refine.decide

    async def crashing_decide(state, runtime):
        raise RuntimeError("power cut")

    live_tp, live = provider()
    exporter = enable_live(live_tp)
    try:
        monkeypatch.setattr(self_refine, "decide", crashing_decide)
        with pytest.raises(RunFailed) as failed:
            await run("self-refine", "task", store=store, models={"local": model})
        run_id = failed.value.result.run_id
        monkeypatch.setattr(self_refine, "decide", real_decide)
        clear_compiled_graphs()
        await resume(run_id, store=store, models={"local": model})
    finally:
        disable_live(exporter)
    after_tp, after = provider()
    export_run(store, run_id, after_tp)
    for spans in (live.get_finished_spans(), after.get_finished_spans()):
        runs = sorted((s for s in spans if s.name == "invoke_workflow self-refine"), key=lambda s: s.start_time)
        assert len(runs) == 2 and {s.attributes["refinegraph.run_id"] for s in runs} == {run_id}
        assert runs[0].status.status_code.name == "ERROR" and runs[0].attributes["refinegraph.stop_reason"] == "error"
        assert runs[1].attributes["refinegraph.resumed"] is True
        assert runs[1].attributes["refinegraph.stop_reason"] == "done"
        assert [e.name for e in runs[1].events] == ["run_resumed"]
    assert shape(live.get_finished_spans()) == shape(after.get_finished_spans())
