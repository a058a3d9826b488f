"""OpenTelemetry spans for runs, nodes and model calls (GenAI semantic conventions).

One span per run (`invoke_workflow <graph>`), one per node under it (nested as the nodes
were: a subgraph's nodes under the node that ran it), one per model call under its node
(`chat <model>`, kind CLIENT, with the gen_ai.* request and usage attributes). Decision
events (vote, route, verdict, critique, score, ...) become span events on their node's
span, their payload flattened to `refinegraph.<field>` attributes.

Two ways in, one mapping:
- `export_run(store, run_id)`: a recorded trace, afterwards, with the recorded times;
- live: `enable_live()` (or REFINEGRAPH_OTEL=1) follows every traced run as its events
  are written, through the trace writer's observers, on the global TracerProvider unless
  one is given.

Message texts (inputs, answers, prompts, completions) are left out unless asked for
(`capture_content=True` or REFINEGRAPH_OTEL_CAPTURE_CONTENT=1), as the conventions advise.
opentelemetry is an optional extra (`pip install 'refinegraph[otel]'`), imported lazily.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from typing import Any

from refinegraph.events import DECISION_TYPES
from refinegraph.trace import store as trace_store
from refinegraph.trace.redact import redact_value
from refinegraph.trace.store import TraceStore, TraceStoreError

SPAN_EVENT_TYPES = DECISION_TYPES | {"error", "retry"}
INSTALL_HINT = "OpenTelemetry export needs the otel extra: pip install 'refinegraph[otel]'"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OtelUnavailable(RuntimeError):
    """opentelemetry-api/sdk are not installed."""


def _otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise OtelUnavailable(INSTALL_HINT) from exc
    return trace


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def ts_ns(ts: str | None) -> int | None:
    """Nanoseconds since the epoch of an event's ISO time, exactly (no float rounding)."""
    if not ts:
        return None
    delta = datetime.fromisoformat(ts) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def flatten(payload: dict[str, Any], prefix: str = "refinegraph.") -> dict[str, Any]:
    """Attribute values OpenTelemetry accepts: nested dicts become dotted keys, lists of one
    primitive type stay lists, other lists (vote groups, ...) become JSON; None is left out."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, dict):
            out.update(flatten(value, name + ".") if value else {name: "{}"})
        elif isinstance(value, (list, tuple)):
            kinds = {type(v) for v in value}
            if value and len(kinds) == 1 and kinds <= {str, bool, int, float}:
                out[name] = list(value)
            else:
                out[name] = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, (str, bool, int, float)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class SpanBuilder:
    """Turns one run's events, fed in order, into spans (used by both ways in)."""

    def __init__(self, tracer: Any, run_id: str, *, parent_context: Any = None, store: TraceStore | None = None,
                 capture_content: bool = False):
        self.trace = _otel()
        self.tracer, self.run_id, self.store = tracer, run_id, store
        self.parent_context = parent_context
        self.capture_content = capture_content
        self.run_span: Any = None
        self.nodes: list[tuple[str, Any]] = []  # open node spans, innermost last
        self.models: dict[str, dict[str, Any]] = {}
        self.last_ns: int | None = None

    # -- structure ------------------------------------------------------------------------

    def _context(self, span: Any) -> Any:
        return self.trace.set_span_in_context(span)

    def _owner(self, node: str | None) -> Any:
        """The span an event of `node` belongs to: the innermost open span of that node."""
        for name, span in reversed(self.nodes):
            if name == node:
                return span
        return self.nodes[-1][1] if (self.nodes and node is not None) else self.run_span

    def _start_run(self, event: dict[str, Any], graph: str, resumed: bool = False) -> None:
        attrs = {"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": graph,
                 "refinegraph.run_id": self.run_id, "refinegraph.graph": graph}
        if resumed:
            attrs["refinegraph.resumed"] = True
        self.run_span = self.tracer.start_span(f"invoke_workflow {graph}", context=self.parent_context,
                                               kind=self.trace.SpanKind.INTERNAL, attributes=attrs,
                                               start_time=ts_ns(event.get("ts")))

    def on_event(self, event: dict[str, Any]) -> None:
        """Advance the spans by one event (as the trace holds it: a dict). Redacted here too:
        a live exporter sees the event before the store's copy, and an old store may hold
        what a new one would not."""
        event = redact_value(event)
        kind, node, when = event.get("type"), event.get("node"), ts_ns(event.get("ts"))
        self.last_ns = when or self.last_ns
        if kind == "run_started":
            self.models = event.get("models") or {}
            self._start_run(event, str(event.get("graph")))
            attrs = flatten({"params": event.get("params"), "roles": event.get("roles"),
                             "budget": event.get("budget"), "replay_of": event.get("replay_of"),
                             "version": event.get("version")})
            if self.capture_content:
                attrs["refinegraph.input"] = json.dumps(event.get("input"), ensure_ascii=False)
            self.run_span.set_attributes(attrs)
            return
        if self.run_span is None:  # a resumed run followed live, or a trace without its start
            self._start_run(event, self._recorded_graph(), resumed=kind == "run_resumed")
        if kind == "run_resumed":
            self._close_nodes(when, "interrupted: the run resumed from its checkpoint")
            self.run_span.add_event("run_resumed", flatten({"recorded_calls": event.get("recorded_calls")}),
                                    timestamp=when)
        elif kind == "node_started":
            parent = self.nodes[-1][1] if self.nodes else self.run_span
            span = self.tracer.start_span(str(node), context=self._context(parent), start_time=when,
                                          attributes={"refinegraph.node": str(node), "refinegraph.seq": event["seq"]})
            self.nodes.append((str(node), span))
        elif kind == "node_finished":
            self._finish_node(event, when)
        elif kind == "llm_call":
            self._llm_call(event, when)
        elif kind == "run_finished":
            self._finish_run(event, when)
        elif kind in SPAN_EVENT_TYPES:
            span = self._owner(node)
            skip = {"run_id", "seq", "ts", "node", "type"}
            attrs = flatten({k: v for k, v in event.items() if k not in skip})
            attrs["refinegraph.seq"] = event["seq"]
            span.add_event(str(kind), attrs, timestamp=when)
            if kind == "error":
                span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, str(event.get("error_class"))))

    def _finish_node(self, event: dict[str, Any], when: int | None) -> None:
        for i in range(len(self.nodes) - 1, -1, -1):
            name, span = self.nodes[i]
            if name == event.get("node"):
                for _, inner in reversed(self.nodes[i + 1:]):  # left open by a crash: end with it
                    inner.end(end_time=when)
                del self.nodes[i:]
                span.set_attribute("refinegraph.node.outcome", str(event.get("outcome")))
                span.set_attribute("refinegraph.node.duration_ms", float(event.get("duration_ms") or 0.0))
                if event.get("outcome") == "error":
                    span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, "node raised"))
                span.end(end_time=when)
                return

    def _close_nodes(self, when: int | None, why: str) -> None:
        for _, span in reversed(self.nodes):
            span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, why))
            span.end(end_time=when)
        self.nodes = []

    def _llm_call(self, e: dict[str, Any], when: int | None) -> None:
        params = e.get("params") or {}
        name = str(e.get("model"))
        recorded = self.models.get(name) or {}
        model_id = recorded.get("model") or name
        start = when - int(float(e.get("latency_ms") or 0.0) * 1_000_000) if when is not None else None
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": str(e.get("backend")),
            "gen_ai.system": str(e.get("backend")),
            "gen_ai.request.model": str(model_id),
            "gen_ai.usage.input_tokens": int(e.get("prompt_tokens") or 0),
            "gen_ai.usage.output_tokens": int(e.get("completion_tokens") or 0),
            "gen_ai.response.finish_reasons": [str(r) if r is not None else "" for r in e.get("finish_reasons") or []],
            "refinegraph.model": name, "refinegraph.role": str(e.get("role")),
            "refinegraph.source": str(e.get("source")), "refinegraph.seq": e["seq"],
            "refinegraph.requests": int(e.get("requests") or 1), "refinegraph.attempts": int(e.get("attempts") or 0),
            "refinegraph.cached_prompt_tokens": int(e.get("cached_prompt_tokens") or 0),
            "refinegraph.call_key": str(e.get("call_key")),
        }
        for key, attr in (("temperature", "gen_ai.request.temperature"), ("max_tokens", "gen_ai.request.max_tokens"),
                          ("seed", "gen_ai.request.seed")):
            if params.get(key) is not None:
                attrs[attr] = params[key]
        if (params.get("n") or 1) != 1:
            attrs["gen_ai.request.choice.count"] = int(params["n"])
        if params.get("stop"):
            attrs["gen_ai.request.stop_sequences"] = [str(s) for s in params["stop"]]
        if e.get("cost_usd") is not None:
            attrs["refinegraph.cost_usd"] = float(e["cost_usd"])
        if self.capture_content:
            attrs.update(self._content(e))
        span = self.tracer.start_span(f"chat {model_id}", context=self._context(self._owner(e.get("node"))),
                                      kind=self.trace.SpanKind.CLIENT, attributes=attrs, start_time=start)
        span.end(end_time=when)

    def _content(self, e: dict[str, Any]) -> dict[str, Any]:
        """gen_ai.input.messages / gen_ai.output.messages from the call's blobs (opt-in)."""
        if self.store is None:
            return {}
        try:
            request = self.store.get_blob(e["request_blob"])
            response = self.store.get_blob(e["response_blob"])
        except (TraceStoreError, KeyError, ValueError) as exc:
            return {"refinegraph.content_error": str(exc)}
        inputs = [{"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]}
                  for m in request.get("messages", [])]
        reasons = response.get("finish_reasons") or []
        outputs = [{"role": "assistant", "parts": [{"type": "text", "content": text}],
                    "finish_reason": reasons[i] if i < len(reasons) else None}
                   for i, text in enumerate(response.get("texts", []))]
        return {"gen_ai.input.messages": json.dumps(redact_value(inputs), ensure_ascii=False),
                "gen_ai.output.messages": json.dumps(redact_value(outputs), ensure_ascii=False)}

    def _finish_run(self, e: dict[str, Any], when: int | None) -> None:
        self._close_nodes(when, "still open when the run finished")
        usage = e.get("usage") or {}
        attrs = {"refinegraph.stop_reason": str(e.get("stop_reason")),
                 "refinegraph.model_calls": int(e.get("model_calls") or 0),
                 "refinegraph.cache_hits": int(e.get("cache_hits") or 0),
                 "gen_ai.usage.input_tokens": int(usage.get("prompt_tokens") or 0),
                 "gen_ai.usage.output_tokens": int(usage.get("completion_tokens") or 0)}
        if self.capture_content and e.get("answer") is not None:
            attrs["refinegraph.answer"] = str(e["answer"])
        self.run_span.set_attributes(attrs)
        if e.get("stop_reason") == "error":
            self.run_span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, "run failed"))
        self.run_span.end(end_time=when)
        self.run_span = None

    def close(self) -> None:
        """End what is still open (a run that did not finish), at its last event's time."""
        self._close_nodes(self.last_ns, "the run did not finish")
        if self.run_span is not None:
            self.run_span.set_attribute("refinegraph.finished", False)
            self.run_span.end(end_time=self.last_ns)
            self.run_span = None

    def _recorded_graph(self) -> str:
        if self.store is not None:
            row = self.store.run(self.run_id)
            started = self.store.events(self.run_id, types={"run_started"})
            if started:
                self.models = started[0].get("models") or {}
            if row:
                return str(row["graph"])
        return "unknown"


def _tracer(tracer_provider: Any = None) -> Any:
    from refinegraph.version import __version__

    return _otel().get_tracer("refinegraph", __version__, tracer_provider=tracer_provider)


def export_run(store: TraceStore, run_id: str, tracer_provider: Any = None, *, capture_content: bool = False,
               parent_context: Any = None) -> int:
    """Emit a recorded run as spans with its recorded times; returns the number of events read.

    The run span is a root unless `parent_context` is given. Spans go to `tracer_provider`
    (default: the global one); flush or shut it down to send them.
    """
    _otel()
    from opentelemetry.context import Context

    builder = SpanBuilder(_tracer(tracer_provider), run_id, store=store, capture_content=capture_content,
                          parent_context=parent_context if parent_context is not None else Context())
    events = store.events(run_id)
    for event in events:
        builder.on_event(event)
    builder.close()
    return len(events)


class LiveExporter:
    """A trace-writer observer that turns each traced run's events into spans as they are
    written. The run span is a child of the span current when the run starts."""

    def __init__(self, tracer_provider: Any = None, *, capture_content: bool | None = None):
        self.tracer = _tracer(tracer_provider)
        self.tracer_provider = tracer_provider
        self.capture_content = _env_flag("REFINEGRAPH_OTEL_CAPTURE_CONTENT") if capture_content is None \
            else capture_content
        self._runs: dict[str, SpanBuilder] = {}
        self._lock = threading.Lock()

    def __call__(self, writer: Any, event: Any) -> None:
        with self._lock:
            builder = self._runs.get(writer.run_id)
            if builder is None:
                builder = SpanBuilder(self.tracer, writer.run_id, store=getattr(writer, "store", None),
                                      capture_content=self.capture_content)
                self._runs[writer.run_id] = builder
            builder.on_event(event.model_dump(mode="json"))
            if event.type == "run_finished":
                del self._runs[writer.run_id]

    @property
    def open_runs(self) -> list[str]:
        return list(self._runs)


def enable_live(tracer_provider: Any = None, *, capture_content: bool | None = None) -> LiveExporter:
    """Export every traced run of this process live; calling again with the same provider
    returns the exporter already added. Undo with `disable_live`."""
    _otel()
    for observer in trace_store.OBSERVERS:
        if isinstance(observer, LiveExporter) and observer.tracer_provider is tracer_provider and (
                capture_content is None or observer.capture_content == capture_content):
            return observer
    exporter = LiveExporter(tracer_provider, capture_content=capture_content)
    trace_store.OBSERVERS.append(exporter)
    return exporter


def disable_live(exporter: LiveExporter | None = None) -> None:
    """Stop live export (of `exporter`, or of every live exporter)."""
    for observer in list(trace_store.OBSERVERS):
        if observer is exporter or (exporter is None and isinstance(observer, LiveExporter)):
            trace_store.OBSERVERS.remove(observer)


__all__ = ["export_run", "enable_live", "disable_live", "LiveExporter", "SpanBuilder", "OtelUnavailable", "flatten"]
