"""One run as one self-contained HTML page: what happened, step by step, for humans.

The page has no external assets and needs no script: steps and model calls collapse
with <details>/<summary>. Everything taken from the trace is escaped, since traces hold
model output (untrusted) and inputs written by anyone. A page of a trace whose chain
does not verify says so at the top and marks the event that broke.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from refinegraph.trace.store import BaseTraceStore, TraceStoreError
from refinegraph.trace.verify import VerifyReport, verify_run

CSS = """
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--muted:#57606a;--line:#d0d7de;--bg2:#f6f8fa}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:16px 24px;color:#1f2328}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:20px 0 8px;border-bottom:1px solid var(--line)}
table{border-collapse:collapse;margin:4px 0} td,th{border:1px solid var(--line);padding:3px 8px;text-align:left;
vertical-align:top} th{background:var(--bg2)}
table.kv th{width:160px}
pre{white-space:pre-wrap;word-break:break-word;background:var(--bg2);padding:6px 8px;margin:4px 0;
border-radius:4px;max-height:420px;overflow:auto}
.verify{font-size:16px;font-weight:600;padding:10px 14px;border-radius:6px;margin:10px 0}
.verify.ok{background:#dafbe1;color:var(--ok);border:1px solid var(--ok)}
.verify.bad{background:#ffebe9;color:var(--bad);border:2px solid var(--bad)}
details.node{border:1px solid var(--line);border-radius:6px;margin:8px 0;padding:4px 10px}
details.node>summary{font-weight:600;cursor:pointer}
details.call{border-left:3px solid #0969da;margin:6px 0;padding:2px 8px;background:#fff}
details.call>summary{cursor:pointer}
.ev{margin:6px 0;padding:4px 8px;border-left:3px solid var(--line)}
.ev .kind{font-weight:600;text-transform:uppercase;font-size:12px;letter-spacing:.04em}
.seq{color:var(--muted);font-size:12px;font-family:monospace;margin-right:6px}
.dim{color:var(--muted)}
tr.winner td{background:#dafbe1;font-weight:600} li.chosen{font-weight:600;color:var(--ok)}
.ev.fallback,.ev.budget,.ev.retry{border-left-color:var(--warn);background:#fff8c5}
.ev.error,.ev.outcome-error{border-left-color:var(--bad);background:#ffebe9}
.ev.stop,.ev.run_finished{border-left-color:var(--ok);background:#dafbe1}
.ev.tampered,details.tampered{outline:3px solid var(--bad)}
.tag{display:inline-block;padding:0 6px;border-radius:10px;font-size:12px;background:var(--bg2);
border:1px solid var(--line);margin-left:4px}
.tag.ok{color:var(--ok);border-color:var(--ok)} .tag.bad{color:var(--bad);border-color:var(--bad)}
.msg-role{font-weight:600;font-size:12px;color:var(--muted)}
"""

LONG_TEXT = 200_000  # characters of one text shown on the page; the rest is cut and says so


def esc(value: Any) -> str:
    """Escaped text of anything (None shows as an em dash)."""
    if value is None:
        return "&mdash;"
    return html.escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                       if isinstance(value, (dict, list)) else str(value), quote=True)


def pre(text: Any) -> str:
    body = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, indent=2)
    if len(body) > LONG_TEXT:
        body = body[:LONG_TEXT] + f"\n[... {len(body) - LONG_TEXT} more characters not shown]"
    return f"<pre>{esc(body)}</pre>"


def kv_table(rows: list[tuple[str, Any]], raw: set[str] = frozenset()) -> str:
    """A two-column table; values named in `raw` are already HTML (built by this module)."""
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{v if k in raw else esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _ms(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


@dataclass
class Step:
    """A node's run: its start and finish events and what happened in between."""

    name: str
    start: dict[str, Any]
    finish: dict[str, Any] | None = None
    items: list[Any] = field(default_factory=list)  # events (dict) and nested Steps


def build_tree(events: list[dict[str, Any]]) -> list[Any]:
    """Top-level items: events outside nodes and Steps, nested as the nodes were (a
    subgraph's nodes inside the node that ran it). node_finished closes the innermost
    open step of its name; an event goes to the innermost open step of its node."""
    top: list[Any] = []
    stack: list[Step] = []

    def owner(node: str | None) -> list[Any]:
        for step in reversed(stack):
            if step.name == node:
                return step.items
        return stack[-1].items if (stack and node is not None) else top

    for event in events:
        kind, node = event.get("type"), event.get("node")
        if kind == "node_started":
            step = Step(str(node), event)
            (stack[-1].items if stack else top).append(step)
            stack.append(step)
        elif kind == "node_finished":
            for i in range(len(stack) - 1, -1, -1):
                if stack[i].name == node:
                    stack[i].finish = event
                    del stack[i:]
                    break
            else:
                top.append(event)
        else:
            owner(node).append(event)
    return top


class Renderer:
    """Renders one run's events (see `render_run`)."""

    def __init__(self, store: BaseTraceStore, run_id: str, report: VerifyReport):
        self.store, self.run_id, self.report = store, run_id, report
        self.calls = 0
        self.steps = 0
        self.sql: dict[int, str] = {}  # candidate -> SQL, so SQL votes show queries, not result digests

    # -- blobs ----------------------------------------------------------------------------

    def blob(self, digest: str | None) -> tuple[Any, str | None]:
        if not digest:
            return None, "no blob recorded"
        try:
            return self.store.get_blob(digest), None
        except (TraceStoreError, ValueError) as exc:
            return None, str(exc)

    # -- structure ------------------------------------------------------------------------

    def items(self, items: list[Any]) -> str:
        return "".join(self.step(i) if isinstance(i, Step) else self.event(i) for i in items)

    def marks(self, event: dict[str, Any] | None) -> str:
        return " tampered" if event is not None and event.get("seq") == self.report.bad_seq else ""

    def step(self, step: Step) -> str:
        self.steps += 1
        finish = step.finish or {}
        outcome = finish.get("outcome", "unfinished")
        tag = "ok" if outcome == "ok" else "bad"
        calls = _count_calls(step.items)
        head = (f'<span class="seq">#{esc(step.start.get("seq"))}</span>step {self.steps}: '
                f'<span class="node-name">{esc(step.name)}</span> <span class="tag {tag}">{esc(outcome)}</span>'
                f' <span class="dim">{_ms(finish.get("duration_ms"))}, {calls} model call(s)</span>')
        bad = self.marks(step.start) or self.marks(step.finish)
        note = f'<div class="verify bad">this step broke the chain: {esc(self.report.problem)}</div>' if bad else ""
        return (f'<details class="node{bad}" open id="e{esc(step.start.get("seq"))}" data-node="{esc(step.name)}">'
                f'<summary>{head}</summary>{note}{self.items(step.items)}</details>')

    def event(self, e: dict[str, Any]) -> str:
        kind = str(e.get("type", "?"))
        render = getattr(self, f"ev_{kind}", None)
        body = render(e) if render else pre({k: v for k, v in e.items() if k not in ("run_id", "seq", "ts")})
        if kind == "llm_call":
            return body
        bad = self.marks(e)
        note = (f'<div class="verify bad">this event broke the chain: {esc(self.report.problem)}</div>'
                if bad else "")
        return (f'<div class="ev {esc(kind)}{bad}" id="e{esc(e.get("seq"))}" data-type="{esc(kind)}">'
                f'<span class="seq">#{esc(e.get("seq"))}</span><span class="kind">{esc(kind.replace("_", " "))}</span>'
                f'{note}{body}</div>')

    # -- events ---------------------------------------------------------------------------

    def ev_llm_call(self, e: dict[str, Any]) -> str:
        self.calls += 1
        params = e.get("params") or {}
        request, req_err = self.blob(e.get("request_blob"))
        response, resp_err = self.blob(e.get("response_blob"))
        messages = "".join(f'<div class="msg"><span class="msg-role">{esc(m.get("role"))}</span>'
                           f'{pre(m.get("content", ""))}</div>'
                           for m in (request or {}).get("messages", []) if isinstance(m, dict))
        texts = (response or {}).get("texts", [])
        reasons = (response or {}).get("finish_reasons", [])
        answers = "".join(f'<div class="response"><span class="msg-role">sample {i}'
                          f'{" (" + esc(reasons[i]) + ")" if i < len(reasons) else ""}</span>{pre(t)}</div>'
                          for i, t in enumerate(texts))
        cache = ' <span class="tag">cache</span>' if e.get("source") == "cache" else ""
        capped = ' <span class="tag bad">max_tokens capped by budget</span>' if e.get("max_tokens_capped") else ""
        summary = (f'<span class="seq">#{esc(e.get("seq"))}</span>model call {self.calls}: '
                   f'role <b>{esc(e.get("role"))}</b>, model <b>{esc(e.get("model"))}</b> '
                   f'<span class="dim">({esc(e.get("backend"))})</span>, n={esc(params.get("n"))}, '
                   f'T={esc(params.get("temperature"))}, tokens {esc(e.get("prompt_tokens"))}+'
                   f'{esc(e.get("completion_tokens"))}, {_ms(e.get("latency_ms"))}{cache}{capped}')
        details = kv_table([("params", params), ("finish reasons", e.get("finish_reasons")),
                            ("requests / attempts", f"{e.get('requests')} / {e.get('attempts')}"),
                            ("cost (USD)", e.get("cost_usd")), ("call key", e.get("call_key"))])
        bad = self.marks(e)
        note = f'<div class="verify bad">this event broke the chain: {esc(self.report.problem)}</div>' if bad else ""
        return (f'<details class="call{bad}" id="e{esc(e.get("seq"))}" data-type="llm_call"><summary>{summary}'
                f'</summary>{note}{details}<h4>request</h4>'
                f'{messages or pre(req_err or "(no messages)")}<h4>response</h4>'
                f'{answers or pre(resp_err or "(no texts)")}</details>')

    def ev_run_started(self, e: dict[str, Any]) -> str:
        return kv_table([("graph", e.get("graph")), ("params", e.get("params")), ("roles", e.get("roles")),
                         ("budget", e.get("budget")), ("version", e.get("version"))])

    def ev_run_resumed(self, e: dict[str, Any]) -> str:
        return f"<p>resumed from its checkpoint; {esc(e.get('recorded_calls'))} recorded call(s) reused</p>"

    def ev_vote(self, e: dict[str, Any]) -> str:
        rows = []
        for g in e.get("groups") or []:
            won = g.get("key") == e.get("winner")
            queries = ""
            if self.sql:
                queries = "<td>" + "".join(pre(self.sql[m]) for m in g.get("members") or [] if m in self.sql) + "</td>"
            rows.append(f'<tr class="{"winner" if won else ""}"><td>{esc(g.get("key"))}{" &#10004;" if won else ""}'
                        f'</td><td class="votes">{esc(g.get("votes"))}</td><td>{esc(g.get("weight"))}</td>'
                        f'<td>{esc(g.get("members"))}</td>{queries}</tr>')
        sql_head = "<th>queries</th>" if self.sql else ""
        failed = f"<p>unparseable (not counted): {esc(e.get('failed'))}</p>" if e.get("failed") else ""
        tie = ' <span class="tag bad">tie</span>' if e.get("tie") else ""
        return (f'<p>winner <b>{esc(e.get("winner"))}</b>{tie}, agreement '
                f'{esc(_pct(e.get("agreement")))}</p><table class="vote"><tr><th>answer</th><th>votes</th>'
                f'<th>weight</th><th>members</th>{sql_head}</tr>{"".join(rows)}</table>{failed}')

    def ev_sampling_check(self, e: dict[str, Any]) -> str:
        return kv_table([("samples", e.get("samples")), ("counts", e.get("counts")), ("leader", e.get("leader")),
                         ("rule", e.get("rule")), ("posterior", e.get("posterior")), ("threshold", e.get("threshold")),
                         ("stop", "yes" if e.get("stop") else "no, sample more"), ("reason", e.get("reason"))])

    def ev_score(self, e: dict[str, Any]) -> str:
        return kv_table([("candidate", e.get("candidate")), ("outcome", e.get("outcome")), ("steps", e.get("steps")),
                         ("scorer", e.get("scorer")), ("parsed with", e.get("parsed_with"))])

    def ev_difficulty(self, e: dict[str, Any]) -> str:
        return kv_table([("label", e.get("label")), ("iteration", e.get("iteration")),
                         ("majority reward", e.get("majority_reward")), ("confidence", e.get("confidence")),
                         ("thresholds", e.get("thresholds"))])

    def ev_judge(self, e: dict[str, Any]) -> str:
        options = "".join(f'<li class="{"chosen" if o == e.get("chosen") else ""}">{esc(o)}</li>'
                          for o in e.get("options") or [])
        return (f"<p>chose <b>{esc(e.get('chosen'))}</b> <span class=\"dim\">(parsed with "
                f"{esc(e.get('parsed_with') or '?')})</span></p><ol start=\"0\">{options}</ol>"
                f"{pre(e.get('reason')) if e.get('reason') else ''}")

    def ev_route(self, e: dict[str, Any]) -> str:
        low, high = (list(e.get("thresholds") or []) + [None, None])[:2]
        sigma = e.get("sigma")
        rows: list[tuple[str, Any]] = [
            ("phase", e.get("phase")),
            ("probes", f"{e.get('probes')} from {e.get('probe_model')} (T={e.get('probe_temperature')}, "
                       f"seed={e.get('probe_seed')})"),
            ("probe answers", e.get("probe_answers")),
            ("sigma", f"{sigma} against thresholds {low} / {high}"),
            ("mode", f"{e.get('mode')}-model mode"), ("models", e.get("models"))]
        if e.get("phase") == "final":
            rows += [("model answers", e.get("model_answers")), ("tokens", e.get("tokens")),
                     ("cost (USD)", e.get("cost_usd")), ("winner", e.get("winner"))]
        return kv_table(rows)

    def ev_verdict(self, e: dict[str, Any]) -> str:
        verdict = {True: "correct", False: "wrong", None: "unknown"}.get(e.get("correct"), "?")
        tag = "ok" if e.get("correct") else "bad"
        return (f'<p>{esc(e.get("subject"))}: <span class="tag {tag}">{verdict}</span></p>'
                f'{pre(e.get("reason")) if e.get("reason") else ""}')

    def ev_critique(self, e: dict[str, Any]) -> str:
        edits = "".join(f"<li>{esc(x)}</li>" for x in e.get("edits") or [])
        return (kv_table([("candidate", e.get("candidate")), ("score", e.get("score")),
                          ("done", "yes" if e.get("done") else "no, refine"), ("criteria", e.get("criteria")),
                          ("parsed with", e.get("parsed_with"))]) + (f"<ul>{edits}</ul>" if edits else ""))

    def ev_refine(self, e: dict[str, Any]) -> str:
        return (f"<p>iteration {esc(e.get('iteration'))}: candidate {esc(e.get('from_candidate'))} "
                f"&rarr; {esc(e.get('to_candidate'))}</p>")

    def ev_merge(self, e: dict[str, Any]) -> str:
        inputs = "".join(pre(i.get("sql", i) if isinstance(i, dict) else i) for i in e.get("inputs") or [])
        tag = "ok" if e.get("accepted") else "bad"
        return (f'<p>merged <span class="tag {tag}">{"accepted" if e.get("accepted") else "rejected"}</span> '
                f'{esc(e.get("reason"))}</p><h4>inputs</h4>{inputs}<h4>output</h4>{pre(e.get("output_sql"))}')

    def ev_sql_exec(self, e: dict[str, Any]) -> str:
        if isinstance(e.get("candidate"), int):
            self.sql[e["candidate"]] = str(e.get("sql"))
        if e.get("error_class"):
            result = f'<span class="tag bad">{esc(e.get("error_class"))}</span> {esc(e.get("error"))}'
        else:
            result = f"{esc(e.get('rows'))} row(s){' (truncated)' if e.get('truncated') else ''}"
        return (f"<p>candidate {esc(e.get('candidate'))}: {result} <span class=\"dim\">"
                f"{_ms(e.get('elapsed_ms'))}</span></p>{pre(e.get('sql'))}")

    def ev_fallback(self, e: dict[str, Any]) -> str:
        return (f"<p><b>{esc(e.get('kind'))}</b>: {esc(e.get('reason'))}</p>"
                f"{pre(e.get('detail')) if e.get('detail') else ''}")

    def ev_budget(self, e: dict[str, Any]) -> str:
        return kv_table([("reason", e.get("reason")), ("spent", e.get("spent")), ("limits", e.get("limits"))])

    def ev_error(self, e: dict[str, Any]) -> str:
        return f"<p><b>{esc(e.get('error_class'))}</b></p>{pre(e.get('message'))}"

    def ev_retry(self, e: dict[str, Any]) -> str:
        return (f"<p>model {esc(e.get('model'))}, attempt {esc(e.get('attempt'))}: {esc(e.get('error_class'))}, "
                f"waiting {esc(e.get('wait_s'))} s</p>{pre(e.get('message'))}")

    def ev_stop(self, e: dict[str, Any]) -> str:
        return (f"<p>stop reason <b>{esc(e.get('reason'))}</b>, chosen candidate {esc(e.get('chosen'))}"
                f"{', score ' + esc(e.get('score')) if e.get('score') is not None else ''}</p>")

    def ev_run_finished(self, e: dict[str, Any]) -> str:
        return (f"<p>stop reason <b>{esc(e.get('stop_reason'))}</b>, {esc(e.get('model_calls'))} model call(s), "
                f"{esc(e.get('cache_hits'))} cache hit(s)</p>{pre(e.get('answer') or '(no answer)')}")


def _count_calls(items: list[Any]) -> int:
    """Model calls of a step, those of the steps nested in it included."""
    return sum(_count_calls(i.items) if isinstance(i, Step) else int(i.get("type") == "llm_call") for i in items)


def _models(models: dict[str, Any]) -> str:
    """One line per model: name, backend, model id and prices where recorded."""
    lines = []
    for name, entry in sorted((models or {}).items()):
        entry = entry if isinstance(entry, dict) else {}
        bits = [str(entry.get("backend") or "?")]
        if entry.get("model"):
            bits.append(f"model {entry['model']}")
        if entry.get("base_url"):
            bits.append(str(entry["base_url"]))
        if entry.get("price_input_per_mtok") is not None or entry.get("price_output_per_mtok") is not None:
            bits.append(f"${entry.get('price_input_per_mtok')}/${entry.get('price_output_per_mtok')} per Mtok in/out")
        lines.append(f"<li><b>{esc(name)}</b>: {esc(', '.join(bits))}</li>")
    return f"<ul>{''.join(lines)}</ul>" if lines else esc(None)


def _input(value: Any) -> str:
    """The run's input: a lone field's text as it is, several fields as JSON."""
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    return pre(value)


def _pct(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, (int, float)) else "?"


def _elapsed(start: str | None, end: str | None) -> str:
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"
    return f"{seconds:.3f} s"


def load_events(store: BaseTraceStore, run_id: str) -> list[dict[str, Any]]:
    """Event bodies; a body that is no longer JSON (tampered) is kept as its raw text."""
    events = []
    for row in store.raw_events(run_id):
        try:
            body = json.loads(row["body"])
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            body = {"type": "unreadable", "seq": row["seq"], "stored_type": row["type"], "body": row["body"]}
        events.append(body)
    return events


def render_run(store: BaseTraceStore, run_id: str) -> str:
    """The run's page: header, chain verification, then every step with its calls and decisions."""
    run = store.run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r} in {store.location}")
    report = verify_run(store, run_id)
    events = load_events(store, run_id)
    started = next((e for e in events if e.get("type") == "run_started"), {})
    finished = next((e for e in reversed(events) if e.get("type") == "run_finished"), {})
    calls = [e for e in events if e.get("type") == "llm_call"]
    usage = finished.get("usage") or {
        "prompt_tokens": sum(c.get("prompt_tokens", 0) for c in calls),
        "completion_tokens": sum(c.get("completion_tokens", 0) for c in calls)}
    total = usage.get("total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
    costs = [c["cost_usd"] for c in calls if c.get("cost_usd") is not None]
    fallbacks = [e for e in events if e.get("type") == "fallback"]
    errors = [e for e in events if e.get("type") == "error"]
    renderer = Renderer(store, run_id, report)

    if report.ok:
        status = (f'<div class="verify ok" id="verify" data-ok="true">Chain verified: OK &mdash; {report.events} '
                  f'events, {"sealed" if report.sealed else "not sealed"}'
                  f'{"".join("; " + esc(n) for n in report.notes)}</div>')
    else:
        link = f' (<a href="#e{report.bad_seq}">event {report.bad_seq}</a>)' if report.bad_seq is not None else ""
        status = (f'<div class="verify bad" id="verify" data-ok="false" data-bad-seq="{esc(report.bad_seq)}">'
                  f'Chain BROKEN at event {esc(report.bad_seq)}{link}: {esc(report.problem)}<br>'
                  f'<span class="dim">What follows may not be what the run recorded.</span></div>')
    header = kv_table([
        ("run", run_id), ("graph", run.get("graph")), ("status", run.get("status")),
        ("input", _input(started.get("input", run.get("input_preview")))),
        ("answer", pre(finished.get("answer") if finished else run.get("answer_preview"))),
        ("stop reason", finished.get("stop_reason") or run.get("stop_reason")),
        ("tokens", f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion"
                   f" = {total}"),
        ("model calls", f"{finished.get('model_calls', len(calls))} ({finished.get('cache_hits', 0)} from cache, "
                        f"{len(calls)} llm_call event(s))"),
        ("cost (USD)", f"{sum(costs):.6f}" if costs else "unknown (no prices configured)"),
        ("fallbacks / errors", f"{len(fallbacks)} / {len(errors)}"),
        ("models", _models(started.get("models"))), ("params", started.get("params")),
        ("started", started.get("ts") or run.get("created_at")), ("finished", finished.get("ts")),
        ("wall time", _elapsed(started.get("ts"), finished.get("ts"))),
        ("replay of", run.get("replay_of")),
    ], raw={"input", "answer", "models"})
    steps = renderer.items(build_tree(events))
    title = f"refinegraph run {run_id[:12]} ({run.get('graph')})"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f'<header><h1>{esc(title)}</h1>{status}{header}</header>'
            f'<main><h2>Steps</h2><div id="steps">{steps}</div></main>'
            f'<footer class="dim"><p>{renderer.steps} step(s), {renderer.calls} model call(s), {len(events)} '
            f"event(s). Written by refinegraph from the run's trace.</p></footer></body></html>\n")


def write_html(store: BaseTraceStore, run_id: str, path: str | Path) -> Path:
    """Write the run's page to `path` (UTF-8) and return it."""
    path = Path(path)
    path.write_text(render_run(store, run_id), encoding="utf-8")
    return path
