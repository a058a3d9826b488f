"""`refinegraph bench reliability`, the server's API fuzzed (the `server-fuzz` part).

schemathesis generates requests from the server's own OpenAPI document (its coverage
cases, then hypothesis-generated positive and negative ones), sent in-process (ASGI) with
the right key, and each sent again with a missing or wrong key; then hand-written hostile
requests go over a real uvicorn socket, where a lying Content-Length or a chunked body
means something. The models are scripted (a test double): runs are instant and healthy,
so a 502 is a finding as much as a 5xx. After every request the trace store is counted:
a 200 records exactly one run, anything else none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.reliability_common import Section, run_count, verify_all
from refinegraph.config import Config
from refinegraph.models import ScriptedModel
from refinegraph.procs import free_port
from refinegraph.trace.store import TraceStore

CHAT = "/v1/chat/completions"
BASE = "http://rg.fuzz"
KEY_ENV = "REFINEGRAPH_FUZZ_KEY"
BODY_LIMIT = 64 * 1024
FUZZ_REPLY = "3 times 4 is 12. The answer is 12.\n```sql\nSELECT COUNT(*) FROM items\n```"
QUESTION = "What is 3 times 4?"
log = logging.getLogger("benchmarks")


# -- what every request is checked against ----------------------------------------------


@dataclass
class Tally:
    """Every request sent, what came back, and what it did to the trace store."""

    statuses: Counter[int] = field(default_factory=Counter)
    requests: int = 0
    hostile: int = 0
    """Requests built to be refused: negative cases, wrong or missing keys, hand-written ones."""
    schemathesis_cases: int = 0
    coverage_cases: int = 0
    auth_twins: int = 0
    handwritten: int = 0
    concurrent_bad: int = 0
    server_errors: list[str] = field(default_factory=list)
    bad_gateway: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    runs_without_auth: int = 0
    runs_by_refused: list[str] = field(default_factory=list)
    ok_without_run: list[str] = field(default_factory=list)
    responses_200: int = 0
    no_answer_422: int = 0
    """Chat requests whose run found no answer (a 422 naming the run, which is recorded)."""
    conformance: Counter[str] = field(default_factory=Counter)
    conformance_examples: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    handwritten_results: dict[str, int] = field(default_factory=dict)
    """Each hand-written request's status (0: the connection closed without one)."""

    def note(self, bucket: list[str], text: str) -> None:
        if len(bucket) < 20:
            bucket.append(text)


class ErrorLogs(logging.Handler):
    """ERROR records of the server and uvicorn while fuzzing: a crash a client never saw."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()[:200]}")


@contextlib.contextmanager
def capture_errors() -> Iterator[ErrorLogs]:
    handler = ErrorLogs()
    loggers = [logging.getLogger(name) for name in ("refinegraph.server", "uvicorn.error", "uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@contextlib.contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class Probe:
    """Sends one request at a time, so each one's effect on the trace store is its own."""

    def __init__(self, http: httpx.AsyncClient, store: TraceStore, tally: Tally):
        self.http, self.store, self.tally = http, store, tally

    async def send(self, label: str, method: str, url: str, *, headers: dict[str, Any] | None = None,
                   content: bytes | None = None, params: Any = None, expect: set[int] | None = None,
                   authorized: bool = True) -> httpx.Response | None:
        """Send, then check: no 5xx, status in `expect`, one run for a chat 200 and none otherwise."""
        t = self.tally
        before = run_count(self.store)
        try:
            response = await self.http.request(method, url, headers=headers, content=content, params=params)
        except httpx.HTTPError as exc:
            t.note(t.transport_errors, f"{label}: {type(exc).__name__}: {exc}")
            return None
        started = run_count(self.store) - before
        self.record(label, response.status_code, response.text, started, expect, authorized,
                    is_chat=response.request.url.path == CHAT)
        return response

    def record(self, label: str, status: int, text: str, started: int, expect: set[int] | None, authorized: bool,
               *, is_chat: bool) -> None:
        t = self.tally
        t.requests += 1
        t.statuses[status] += 1
        where = f"{label} -> {status}: {text[:160]}"
        if status == 502:
            t.note(t.bad_gateway, where)
        elif status >= 500:
            t.note(t.server_errors, where)
        if expect is not None and status not in expect:
            t.note(t.unexpected, f"{where} (expected {sorted(expect)})")
        if started and not authorized:
            t.runs_without_auth += started
        if status in (200, 422) and is_chat:
            t.responses_200 += status == 200
            t.no_answer_422 += status == 422
            if started != 1:
                t.note(t.ok_without_run, f"{where} recorded {started} runs")
        elif started and status != 502:
            t.note(t.runs_by_refused, f"{where} recorded {started} runs")


# -- the app under test --------------------------------------------------------------------


def fuzz_config(db: Path) -> Config:
    """Every kind of pipeline: answers, voting, a refine loop, SQL with a fixed and a request's db
    (one the server names: `shop`)."""
    return Config.model_validate({
        "pipelines": {
            "plain": {"graph": "greedy"},
            "math-sc": {"graph": "self-consistency", "params": {"n": 3}, "budget": {"tokens": 4000}},
            "refine": {"graph": "self-refine", "params": {"max_iterations": 2}},
            "sql": {"graph": "sql-greedy", "db": str(db)},
            "sql-open": {"graph": "sql-greedy"},
        },
        "server": {"api_key_env": KEY_ENV, "max_body_bytes": BODY_LIMIT, "allow_request_db": True,
                   "databases": {"shop": str(db)}},
    })


def make_db(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE items (name TEXT)")
        conn.executemany("INSERT INTO items VALUES (?)", [("a",), ("b",)])
    return path


def fuzz_app(workdir: Path, key: str) -> tuple[Any, TraceStore]:
    """The server app on scripted models (a test double), with its own trace store."""
    from refinegraph.server import create_app

    store = TraceStore(workdir / "traces.sqlite")
    model = ScriptedModel(lambda messages: FUZZ_REPLY, name="local")
    db = workdir / "shop.sqlite"
    if not db.exists():
        make_db(db)
    with env_var(KEY_ENV, key):
        app = create_app(fuzz_config(db), models={"local": model}, store=store)
    return app, store


# -- schemathesis ------------------------------------------------------------------------------


def generate_cases(schema: Any, examples: int, seed: int, *, max_coverage_cases: int | None = None) -> list[Any]:
    """Per operation: schemathesis' coverage cases (boundaries, missing parts, wrong content
    types and methods; at most `max_coverage_cases` of them, drawn with `seed`), then
    `examples` hypothesis cases in each generation mode."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    cases: list[Any] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        config = schema.config.generation_for(operation=operation, phase="coverage")
        covering = list(schema.iter_coverage_cases(operation, generation_modes=list(GenerationMode),
                                                   generation_config=config))
        if max_coverage_cases is not None and len(covering) > max_coverage_cases:
            covering = random.Random(seed).sample(covering, max_coverage_cases)
        cases.extend(covering)
        for mode in GenerationMode:
            @hypothesis_seed(seed)
            @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(operation.as_strategy(generation_mode=mode))
            def collect(case: Any) -> None:
                cases.append(case)

            with contextlib.suppress(Unsatisfiable):  # e.g. negative /healthz: nothing in it to get wrong
                collect()
    return cases


BAD_CREDENTIALS = [None, "Bearer wrong-key", "Basic cmc6a2V5", "Bearer", "Bearer {key}x", "{key}",
                   "Bearer {key_upper}"]


def bad_credential(i: int, key: str) -> str | None:
    value = BAD_CREDENTIALS[i % len(BAD_CREDENTIALS)]
    other_case = key.swapcase() if key.swapcase() != key else key + "X"
    return None if value is None else value.format(key=key, key_upper=other_case)


def case_request(case: Any) -> tuple[str, str, dict[str, str], bytes | None, Any]:
    """method, path, headers, body bytes, query: the case as schemathesis would send it."""
    kwargs = case.as_transport_kwargs(base_url=BASE)
    headers = {k: str(v) for k, v in (kwargs.get("headers") or {}).items()}
    content: bytes | None = None
    if "json" in kwargs:
        content = json.dumps(kwargs["json"]).encode()  # ASCII escapes: a lone surrogate stays sendable
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        content = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    path = httpx.URL(kwargs["url"]).raw_path.decode("ascii")
    return kwargs["method"], path, headers, content, kwargs.get("params")


def with_auth(headers: dict[str, str], value: str | None) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    if value is not None:
        out["Authorization"] = value
    return out


async def fuzz_schema(app: Any, store: TraceStore, key: str, tally: Tally, examples: int, seed: int,
                      max_coverage_cases: int | None = None) -> None:
    """The schemathesis cases, each checked for conformance, each authorized one sent again unauthorized."""
    try:
        import schemathesis
    except ImportError:
        raise RuntimeError("fuzzing the server needs schemathesis: pip install 'refinegraph[dev]'") from None
    from schemathesis import checks
    from schemathesis.errors import FailureGroup

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        doc = await http.get("/openapi.json", headers={"Authorization": f"Bearer {key}"})
        doc.raise_for_status()
        # a schema-violating body must be refused with one of the server's 4xx (413: it was also
        # too large); a schema-valid one must run: 2xx, or 422 when the run it started found no
        # answer (e.g. a budget of 0 tokens; the run is recorded), or 404 for a resource the
        # path names (a run id, a model card) that does not exist. Not for a chat: without a
        # [proxy] server the document names every upstream a GRAPH:UPSTREAM form may take,
        # so a schema-valid chat that gets a 404 is a failure (counted below)
        config = schemathesis.Config.from_dict({"checks": {
            "negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 413, 415]},
            "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "404", "422"]}}})
        schema = schemathesis.openapi.from_dict(doc.json(), config=config)
        cases = generate_cases(schema, examples, seed, max_coverage_cases=max_coverage_cases)
        # Not run: ignored_auth (this harness swaps the real key into each authorized case, then
        # sends it again with a missing or wrong one, expecting 401: the auth twins below).
        conformance = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
                       checks.response_headers_conformance, checks.response_schema_conformance,
                       checks.negative_data_rejection, checks.positive_data_acceptance,
                       checks.missing_required_header, checks.unsupported_method]
        probe = Probe(http, store, tally)
        for i, case in enumerate(cases):
            method, path, headers, content, params = case_request(case)
            secured = bool(case.operation.definition.raw.get("security"))
            has_auth = any(k.lower() == "authorization" for k in headers)
            negative = case.meta is not None and case.meta.generation.mode.is_negative
            coverage = case.meta is not None and case.meta.phase.name.value == "coverage"
            tally.schemathesis_cases += 1
            tally.coverage_cases += coverage
            tally.hostile += negative
            authorized = not secured or has_auth
            if secured and has_auth:
                headers = with_auth(headers, f"Bearer {key}")
            expect = None if authorized else {401, 404, 405}
            label = f"schemathesis {method} {path} ({'negative' if negative else 'positive'})"
            response = await probe.send(label, method, path, headers=headers, content=content, params=params,
                                        expect=expect, authorized=authorized)
            if response is not None and not negative and path == CHAT and response.status_code == 404:
                tally.note(tally.unexpected, f"{label} -> 404 for a schema-valid chat: {response.text[:160]}")
            if response is not None:
                try:
                    case.validate_response(response, checks=conformance)
                except FailureGroup as group:
                    for failure in group.exceptions:
                        tally.conformance[failure.title] += 1
                        tally.note(tally.conformance_examples,
                                   f"{label} -> {response.status_code}: {failure.title}: {str(failure.message)[:200]}; "
                                   f"got {response.text[:200]}; sent {content!r:.300}")
            if secured and has_auth:  # the same request without a good key: 401 (or 405: no such route)
                tally.auth_twins += 1
                tally.hostile += 1
                await probe.send(f"{label} with a bad key", method, path, content=content, params=params,
                                 headers=with_auth(headers, bad_credential(i, key)), expect={401, 404, 405},
                                 authorized=False)


# -- hand-written hostile requests ---------------------------------------------------------------


@dataclass
class Hostile:
    """One request built to be refused: either fields for httpx or raw bytes for the socket."""

    name: str
    expect: set[int]
    body: bytes | None = None
    headers: dict[str, str | bytes] | None = None
    method: str = "POST"
    path: str = CHAT
    raw: list[bytes] | None = None
    authorized: bool = True
    half_close: bool = False


def chat_body(**overrides: Any) -> dict[str, Any]:
    return {"model": "plain", "messages": [{"role": "user", "content": QUESTION}], **overrides}


def hostile_requests(key: str, limit: int = BODY_LIMIT) -> list[Hostile]:
    """Malformed, oversized, deep, huge, undecodable, unauthenticated: each must be a 4xx and start no run."""
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    good = json.dumps(chat_body()).encode()

    def post(name: str, body: bytes, expect: int | set[int] = 400, **headers: str) -> Hostile:
        expected = {expect} if isinstance(expect, int) else expect
        return Hostile(name, expected, body, {**auth, **headers})

    def raw(name: str, head: str, parts: list[bytes], expect: set[int], *, half_close: bool = False) -> Hostile:
        lines = f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n" \
                f"Content-Type: application/json\r\nConnection: close\r\n{head}\r\n"
        return Hostile(name, expect, raw=[lines.encode(), *parts], half_close=half_close)

    deep = b'{"model": "plain", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 30_000 + \
        b"]" * 30_000 + b"}"
    cases = [
        # malformed JSON
        post("truncated JSON", good[:-7]),
        post("trailing garbage", good + b"}x"),
        post("empty body", b""),
        post("whitespace body", b" \r\n\t "),
        post("a JSON array", b'["plain"]'),
        post("a JSON string", b'"hello"'),
        post("JSON null", b"null"),
        post("single quotes", good.replace(b'"', b"'")),
        post("a comment", b"/* hi */" + good),
        post("messages as a string", json.dumps(chat_body(messages="hi")).encode()),
        post("role unknown", json.dumps(chat_body(messages=[{"role": "wizard", "content": "hi"}])).encode()),
        post("content an object", json.dumps(chat_body(messages=[{"role": "user", "content": {"a": 1}}])).encode()),
        post("stream a string", json.dumps(chat_body(stream="yes")).encode()),
        post("unknown refinegraph key", json.dumps(chat_body(refinegraph={"paramz": {}})).encode()),
        post("bad params", json.dumps(chat_body(refinegraph={"params": {"bogus": 1}})).encode()),
        post("a request's db on a fixed pipeline", json.dumps(chat_body(model="sql", refinegraph={
            "db": "/etc/passwd"})).encode()),
        post("a non-database file as db", json.dumps(chat_body(model="sql-open", refinegraph={
            "db": "/etc/passwd"})).encode()),
        post("a db path too long", json.dumps(chat_body(model="sql-open", refinegraph={"db": "a" * 5000})).encode()),
        post("a db path with NUL", json.dumps(chat_body(model="sql-open", refinegraph={"db": "a\x00.db"})).encode()),
        post("unknown model", json.dumps(chat_body(model="gpt-4o")).encode(), 404),
        # wrong content types (a browser's cross-site post needs no preflight with these)
        post("text/plain", good, 415, **{"Content-Type": "text/plain"}),
        post("form-urlencoded", good, 415, **{"Content-Type": "application/x-www-form-urlencoded"}),
        post("multipart", good, 415, **{"Content-Type": "multipart/form-data; boundary=x"}),
        post("xml", b"<chat/>", 415, **{"Content-Type": "application/xml"}),
        Hostile("no content type", {415}, good, {"Authorization": f"Bearer {key}"}),
        # oversized
        post("body over the limit", json.dumps(chat_body(messages=[{"role": "user", "content": "x" * limit}])).encode(),
             413),
        raw("declared over the limit, small body", "Content-Length: 99999999999999999999\r\n", [good], {413}),
        raw("declared short, long body sent", "Content-Length: 40\r\n", [good + b" " * (4 * limit)], {400}),
        raw("declared long, body cut off", f"Content-Length: {limit - 1}\r\n", [good], {400, 0}, half_close=True),
        raw("chunked over the limit", "Transfer-Encoding: chunked\r\n",
            [b"%x\r\n%s\r\n" % (8192, b" " * 8192) for _ in range(limit // 8192 + 2)] + [b"0\r\n\r\n"], {413}),
        raw("chunked, bad chunk size", "Transfer-Encoding: chunked\r\n", [b"zz\r\nhello\r\n0\r\n\r\n"], {400}),
        raw("Content-Length and chunked", f"Content-Length: {len(good)}\r\nTransfer-Encoding: chunked\r\n",
            [b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good)], {400, 200}),
        raw("Content-Length not a number", "Content-Length: ten\r\n", [good], {400}),
        raw("Content-Length negative", "Content-Length: -1\r\n", [good], {400}),
        # nesting and numbers
        post("nested 30000 deep", deep),
        post("nested 100 deep in params", json.dumps(chat_body(refinegraph={"params": {"x": nested(100)}})).encode()),
        post("an integer of 6000 digits", b'{"model": "plain", "messages": [], "n": ' + b"9" * 6000 + b"}"),
        post("budget of 10**30 tokens", json.dumps(chat_body(refinegraph={"budget": {"tokens": 10**30}})).encode()),
        post("max_tokens of 10**20", json.dumps(chat_body(refinegraph={"params": {"max_tokens": 10**20}})).encode()),
        post("a float overflowing to infinity", good[:-1] + b', "temperature": 1e999}'),
        post("NaN", good[:-1] + b', "refinegraph": {"budget": {"seconds": NaN}}}'),
        post("Infinity", good[:-1] + b', "refinegraph": {"params": {"temperature": -Infinity}}}'),
        # bytes that are not UTF-8 text
        post("0xff bytes", good.replace(b"3 times", b"\xff\xfe times")),
        post("latin-1 text", json.dumps(chat_body(messages=[{"role": "user", "content": "caf\u00e9"}]),
                                        ensure_ascii=False).encode("latin-1")),
        post("overlong UTF-8", good.replace(b"3 times", b"\xc0\xaf times")),
        post("UTF-8-encoded surrogate", good.replace(b"3 times", b"\xed\xa0\x80 times")),
        post("escaped lone surrogate", good.replace(b"3 times", b"\\ud800 times")),
        # unauthenticated and wrong keys, on bodies that would otherwise run
        *[Hostile(f"auth {name}", {401}, good, {"Content-Type": "application/json", **header}, authorized=False)
          for name, header in [("missing", {}), ("wrong key", {"Authorization": "Bearer nope"}),
                               ("bearer, no token", {"Authorization": "Bearer"}), ("no scheme", {"Authorization": key}),
                               ("basic", {"Authorization": "Basic dXNlcjpwYXNz"}),
                               ("key prefix", {"Authorization": f"Bearer {key[:-1]}"}),
                               ("key suffixed", {"Authorization": f"Bearer {key}0"}),
                               ("non-ASCII", {"Authorization": "Bearer \u00e9\u00e9".encode()})]],
        Hostile("auth missing, oversized", {401}, b"x" * (2 * limit), {"Content-Type": "application/json"},
                authorized=False),
        Hostile("auth missing, streaming", {401}, json.dumps(chat_body(stream=True)).encode(),
                {"Content-Type": "application/json"}, authorized=False),
        Hostile("auth missing, models", {401}, method="GET", path="/v1/models", authorized=False),
        Hostile("auth missing, one model", {401}, method="GET", path="/v1/models/plain", authorized=False),
        Hostile("auth missing, openapi", {401}, method="GET", path="/openapi.json", authorized=False),
        # routes and methods
        Hostile("GET on chat", {405}, method="GET", headers=auth),
        Hostile("DELETE on chat", {405}, method="DELETE", headers=auth),
        Hostile("unknown route", {404}, method="POST", path="/v1/completions", body=good, headers=auth),
        Hostile("path traversal", {404}, method="GET", path="/v1/models/..%2F..%2Fetc%2Fpasswd", headers=auth),
        Hostile("a 100 KB URL", {400, 401, 414, 431}, path="/v1/models", raw=[
            b"GET /v1/models/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"]),
        Hostile("100 headers of 1 KB", {400, 401, 431}, path="/v1/models", raw=[
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(100)) + b"Connection: close\r\n\r\n"]),
    ]
    return cases


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def raw_exchange(port: int, parts: list[bytes], *, half_close: bool, timeout: float = 10.0) -> int:
    """Write `parts` to a fresh connection and read the status line (0: none came back)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def write() -> None:
        with contextlib.suppress(ConnectionError):
            for part in parts:
                writer.write(part)
                await writer.drain()
            if half_close and writer.can_write_eof():
                writer.write_eof()

    sender = asyncio.ensure_future(write())
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, ConnectionError):
        line = b""
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    fields = line.split()
    return int(fields[1]) if len(fields) > 1 and line.startswith(b"HTTP/") and fields[1].isdigit() else 0


class ThreadServer:
    """The app on a loopback socket, served by uvicorn in a thread (hostile requests need the wire)."""

    def __init__(self, app: Any):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def __aenter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 15)


async def fuzz_handwritten(app: Any, store: TraceStore, key: str, tally: Tally, concurrent: int) -> None:
    """Each hostile request alone, then `concurrent` of them at once, then one good request."""
    cases = hostile_requests(key)
    async with ThreadServer(app) as live:
        base = f"http://127.0.0.1:{live.port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            probe = Probe(http, store, tally)
            for case in cases:
                tally.handwritten += 1
                tally.hostile += 1
                label = f"hand-written: {case.name}"
                if case.raw is not None:
                    before = run_count(store)
                    status = await raw_exchange(live.port, case.raw, half_close=case.half_close)
                    if status == 0 and 0 not in case.expect:
                        tally.note(tally.transport_errors, f"{label}: no response")
                    probe.record(label, status, "", run_count(store) - before, case.expect, case.authorized,
                                 is_chat=case.path == CHAT)
                else:
                    response = await probe.send(label, case.method, case.path, headers=case.headers,
                                                content=case.body, expect=case.expect, authorized=case.authorized)
                    status = response.status_code if response is not None else 0
                tally.handwritten_results[case.name] = status
            await concurrent_bad(http, probe, [c for c in cases if c.raw is None], concurrent)
            reply = await probe.send("good request after the hostile ones", "POST", CHAT, content=json.dumps(
                chat_body()).encode(), headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                expect={200})
            if reply is None or reply.status_code != 200:
                tally.note(tally.unexpected, "the server did not answer a good request after the hostile ones")


async def concurrent_bad(http: httpx.AsyncClient, probe: Probe, cases: list[Hostile], count: int) -> None:
    """`count` hostile requests at once: all refused, none recorded as a run."""
    tally = probe.tally
    before = run_count(probe.store)
    picks = [cases[i % len(cases)] for i in range(count)]

    async def one(case: Hostile) -> tuple[Hostile, int | None]:
        try:
            response = await http.request(case.method, case.path, headers=case.headers, content=case.body)
        except httpx.HTTPError as exc:
            tally.note(tally.transport_errors, f"concurrent {case.name}: {type(exc).__name__}: {exc}")
            return case, None
        return case, response.status_code

    results = await asyncio.gather(*[one(case) for case in picks])
    started = run_count(probe.store) - before
    for case, status in results:
        tally.concurrent_bad += 1
        tally.hostile += 1
        if status is not None:
            probe.record(f"concurrent: {case.name}", status, "", 0, case.expect, case.authorized, is_chat=False)
    if started:
        tally.note(tally.runs_by_refused, f"{count} concurrent hostile requests recorded {started} runs")
        tally.runs_without_auth += started


async def fuzz_section(examples: int = 100, *, seed: int = 0, concurrent: int = 200,
                       workdir: Path | None = None, max_coverage_cases: int | None = None) -> Section:
    """The server's API under schemathesis and hand-written hostile requests, on scripted models.

    `examples` is per operation and generation mode (the coverage cases come on top, all of
    them or at most `max_coverage_cases` per operation).
    faults_injected counts the requests built to be refused (negative cases, bad keys,
    hand-written and concurrent hostile requests); runs are the runs the 200s and 422s (no answer) recorded."""
    started = time.perf_counter()
    section = Section(name="server fuzz", ok=True)
    tally = Tally()
    key = secrets.token_urlsafe(24)
    owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="rg-fuzz-")) if owned else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        with capture_errors() as logged:
            (work / "schemathesis").mkdir()
            app, store = fuzz_app(work / "schemathesis", key)
            try:
                await fuzz_schema(app, store, key, tally, examples, seed, max_coverage_cases)
                runs_a = run_count(store)
                verified_a, failed_a, broken_a = verify_all(store)
            finally:
                store.close()
            (work / "handwritten").mkdir()
            app, store = fuzz_app(work / "handwritten", key)
            try:
                await fuzz_handwritten(app, store, key, tally, concurrent)
                runs_b = run_count(store)
                verified_b, failed_b, broken_b = verify_all(store)
            finally:
                store.close()
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    runs = runs_a + runs_b
    server_5xx = sum(n for status, n in tally.statuses.items() if status >= 500)
    section.runs, section.traces_verified, section.traces_failed = runs, verified_a + verified_b, failed_a + failed_b
    section.faults_injected = tally.hostile
    section.seconds = round(time.perf_counter() - started, 2)
    section.figures = {
        "schemathesis_cases": tally.schemathesis_cases, "coverage_cases": tally.coverage_cases,
        "auth_twins": tally.auth_twins, "handwritten_requests": tally.handwritten,
        "concurrent_bad_requests": tally.concurrent_bad, "requests": tally.requests,
        "hostile_requests": tally.hostile, "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "server_errors_5xx": server_5xx, "responses_200": tally.responses_200,
        "no_answer_422": tally.no_answer_422, "runs_recorded": runs,
        "runs_started_without_auth": tally.runs_without_auth, "runs_by_refused_requests": len(tally.runs_by_refused),
        "conformance_failures": dict(tally.conformance), "server_error_logs": len(logged.records),
        "transport_errors": len(tally.transport_errors), "examples_per_mode": examples, "seed": seed,
        "handwritten_statuses": tally.handwritten_results,
    }
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items()))
    section.lines = [
        f"{tally.schemathesis_cases} schemathesis cases ({tally.coverage_cases} coverage, the rest generated), "
        f"{tally.auth_twins} resent with a bad key, {tally.handwritten} hand-written hostile requests, "
        f"{tally.concurrent_bad} hostile requests at once: {tally.requests} requests",
        f"status codes: {statuses}; 5xx: {server_5xx}; server error logs: {len(logged.records)}",
        f"runs recorded {runs} for {tally.responses_200} chat 200s and {tally.no_answer_422} 422s; runs started "
        f"without auth: {tally.runs_without_auth}; by refused requests: {len(tally.runs_by_refused)}",
        f"schema conformance failures: {sum(tally.conformance.values())}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in tally.conformance.items())})" if tally.conformance else ""),
        f"traces verified {section.traces_verified} (failed {section.traces_failed})",
    ]
    expect = section.expect
    expect(server_5xx == 0 and not tally.server_errors,
           f"{server_5xx} responses were 5xx: {tally.server_errors[:3] or tally.bad_gateway[:3]}")
    expect(not tally.bad_gateway, f"runs failed on healthy scripted models (502): {tally.bad_gateway[:3]}")
    expect(not logged.records, f"the server logged {len(logged.records)} errors: {logged.records[:3]}")
    expect(tally.runs_without_auth == 0, f"{tally.runs_without_auth} runs started without a valid key")
    expect(not tally.runs_by_refused, f"refused requests recorded runs: {tally.runs_by_refused[:3]}")
    expect(not tally.ok_without_run, f"200s and 422s without exactly one run: {tally.ok_without_run[:3]}")
    answered = tally.responses_200 + tally.no_answer_422
    expect(runs == answered, f"{runs} runs recorded for {answered} chat 200s and 422s (a run with no answer)")
    expect(not tally.unexpected, f"{len(tally.unexpected)} unexpected statuses: {tally.unexpected[:3]}")
    expect(not tally.conformance, f"schema conformance failures: {tally.conformance_examples[:3]}")
    expect(not tally.transport_errors, f"transport errors: {tally.transport_errors[:3]}")
    expect(section.traces_failed == 0, f"traces that do not verify: {(broken_a + broken_b)[:3]}")
    expect(tally.responses_200 > 0, "no generated request ever ran: the fuzzer never reached a pipeline")
    return section


