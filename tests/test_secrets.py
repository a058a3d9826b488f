"""Secrets never stored: runs carry known secrets through every path (the CLI's --db URL,
a key read through a model's api_key_env, a model base_url with a password, a served
request's Authorization header, header lines and keys inside the messages), then every byte
of the store files, `trace show`, `trace export`, `trace html`, OpenTelemetry spans, the
CLI's output and the captured logs is scanned for each of them.

The model is a stub OpenAI-compatible server on loopback (a test double) that, like real
servers' 401/500 bodies, echoes the credentials it was sent in its first error, and echoes
the user's message in its answers.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from benchmarks.stub_server import LiveServer
from refinegraph import RunFailed, replay, resume, run
from refinegraph.cli.app import app as cli_app
from refinegraph.config import load_config
from refinegraph.models import ScriptedModel
from refinegraph.server import create_app
from refinegraph.trace.redact import (
    MASK,
    is_secret_key,
    known_secrets,
    redact_json,
    redact_text,
    redact_value,
    register_secret,
)

from conftest import scripted_by_role, verdict

# -- the rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "redacted"), [
    ("postgresql://postgres:S3cretPW@127.0.0.1:5432/test", "postgresql://postgres:***@127.0.0.1:5432/test"),
    ("postgresql+psycopg://u:p:a@ss@h/db?x=1", "postgresql+psycopg://u:***@h/db?x=1"),
    ("redis://:hunter22@localhost:6379/0", "redis://:***@localhost:6379/0"),
    ("connect failed: mysql://me:pw@db/x (timeout)", "connect failed: mysql://me:***@db/x (timeout)"),
    ("host=db user=me password=hunter2 dbname=x", "host=db user=me password=*** dbname=x"),
    ("host=db password='two words' dbname=x", "host=db password='***' dbname=x"),
    ("Server=x;Uid=me;Pwd=hunter2;", "Server=x;Uid=me;Pwd=***;"),
    ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
    ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic ***"),
    ('{"Authorization": "Bearer tok123456789"}', '{"Authorization": "***"}'),
    ("x-api-key: k-123456", "x-api-key: ***"),
    ("api-key: 0123abcd", "api-key: ***"),
    ("OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstu", "OPENAI_API_KEY=***"),
    ("db_password: letmein!", "db_password: ***"),
    ("https://h/cb?access_token=abcdef&x=1", "https://h/cb?access_token=***&x=1"),
    ("call it with sk-abcdefghijklmnop1234 now", "call it with *** now"),
    ("token ghp_" + "a" * 36, "token ***"),
    ("curl -H 'Authorization: Bearer eyJhbGciOi.eyJzdWIiOiIx.SflKxwRJSMeKK'", "curl -H 'Authorization: Bearer ***'"),
    ("sent Bearer abcdefgh12345678 upstream", "sent Bearer *** upstream"),
])
def test_text_rules(text, redacted):
    assert redact_text(text) == redacted
    assert redact_text(redacted) == redacted  # idempotent: a replay's redacted input stays as it was


@pytest.mark.parametrize("text", [
    "http://host:8080/path and user@example.com", "prompt_tokens=12 max_tokens: 5 token: 5",
    "the bearer of bad news", "The answer is 12.", "SELECT password FROM users", "sk-learn is a typo",
    "a secret garden", "https://example.com/v1",
])
def test_ordinary_text_is_left_alone(text):
    assert redact_text(text) == text


def test_secret_named_keys_are_redacted_whatever_they_hold():
    value = {"headers": {"Authorization": "Basic x", "X-Api-Key": 5, "Content-Type": "json"},
             "api_key": None, "password": {"nested": 1}, "client_secret": ["a"], "token": "t",
             "max_tokens": 3, "prompt_tokens": 7, "cache_keys": ["k"], "call_key": "c"}
    assert redact_value(value) == {
        "headers": {"Authorization": MASK, "X-Api-Key": MASK, "Content-Type": "json"},
        "api_key": None, "password": MASK, "client_secret": MASK, "token": MASK,
        "max_tokens": 3, "prompt_tokens": 7, "cache_keys": ["k"], "call_key": "c"}
    assert not is_secret_key("max_tokens") and is_secret_key("OPENAI_API_KEY") and is_secret_key("db-password")


@pytest.mark.parametrize("key", ["Authorization", "Proxy-Authorization", "api_key", "X-Api-Key", "apikey", "token",
                                 "access_token", "X-Auth-Token", "id_token", "password", "DB_PASSWORD", "passwd",
                                 "pwd", "secret", "client_secret", "AWS_SECRET_ACCESS_KEY", "aws_access_key",
                                 "private_key", "Cookie", "Set-Cookie"])
def test_every_secret_key_is_found_in_json_text(key):
    """The fast path's trigger words cover every secret-named key, so JSON text that has one
    is never passed through unredacted."""
    assert is_secret_key(key)
    assert json.loads(redact_json(json.dumps({"outer": {key: "v4lue"}}), json.dumps)) == {"outer": {key: MASK}}


def test_known_values_are_replaced_wherever_they_appear():
    secret = "kv" + secrets.token_hex(8)
    assert redact_text(f"error: key {secret} refused") == f"error: key {secret} refused"
    register_secret(secret)
    register_secret("abc")  # too short to replace everywhere: ignored
    assert secret in known_secrets() and "abc" not in known_secrets()
    assert redact_text(f"error: key {secret} refused, abc") == "error: key *** refused, abc"
    # inside JSON text (escaped as JSON spells it), re-spelled only when something changed
    quoted = f'say "{secret}"'
    assert redact_json(json.dumps({"m": quoted}), json.dumps) == json.dumps({"m": 'say "***"'})
    plain = json.dumps({"m": "The answer is 12", "password_hint": None})
    assert redact_json(plain, lambda v: "re-spelled") == plain


def test_a_redacted_postgres_url_connects_without_its_password():
    from refinegraph.tools.sql import connect

    db = connect("postgresql://postgres:***@127.0.0.1:5432/test?schema=s")
    assert db.target.startswith("postgresql://postgres@127.0.0.1:5432/test") and MASK not in db.target
    assert connect("postgresql://postgres:pw%40x@127.0.0.1/test").target.startswith("postgresql://postgres:pw%40x@")


# Text built from the rules' own pieces, so that generated strings hit them often.
PIECES = st.sampled_from(["password", "Pwd", "secret", "Authorization", "api-key", "X-API-KEY", "access_token",
                          "Bearer ", "Basic ", "sk-", "ghp_", "eyJ", "://", "@", ":", "=", " ", "\t", "\n", "'",
                          '"', "\\", "***", ",", ";", "&", "/", ".", "-", "_", "token", "tokens", "é", "\u2028"])
WORD = st.text(alphabet="abcXYZ019", min_size=1, max_size=20)
PAIR = st.tuples(st.sampled_from(["password", "Authorization", "x-api-key", "client_secret", "Pwd"]),
                 st.sampled_from(["=", ": ", "':'", '" = "']), st.sampled_from(["", "Bearer ", "Basic "]),
                 st.one_of(WORD, st.just("***"))).map("".join)
TEXT = st.lists(st.one_of(PIECES, WORD, PAIR), max_size=12).map("".join)
VALUES = st.recursive(st.one_of(st.none(), st.integers(), TEXT),
                      lambda inner: st.one_of(st.lists(inner, max_size=4),
                                              st.dictionaries(st.one_of(TEXT, PIECES), inner, max_size=4)),
                      max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_redaction_is_idempotent(text):
    once = redact_text(text)
    assert redact_text(once) == once


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_json_fast_path_never_skips_what_the_walk_would_redact(value):
    """`redact_json` passes JSON text through when no trigger word is in it: that must
    never keep what redacting the value itself would change."""
    from refinegraph.trace.chain import canonical_json

    assert json.loads(redact_json(canonical_json(value), canonical_json)) == redact_value(value)


def test_logs_of_refinegraph_and_the_server_are_redacted(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    for name in ("uvicorn.error", "uvicorn.access"):  # a served test before may have configured them
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "propagate", True)
        monkeypatch.setattr(logger, "disabled", False)
        caplog.set_level(logging.DEBUG, logger=name)
    logging.getLogger("refinegraph.server").warning("upstream %s refused", "postgresql://u:pw123456@h/db")
    logging.getLogger("uvicorn.error").info("Authorization: Bearer %s", "abcdefgh12345678")
    try:
        raise RuntimeError("cannot connect to postgresql://u:pw123456@h/db")
    except RuntimeError:
        logging.getLogger("refinegraph.runner").exception("run failed")
    logging.getLogger("refinegraph.x").info("password=%s", "hunter2x")  # a secret only the whole shows
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                                             "/v1/models?api_key=qk12345678", "1.1", 200)
    text = caplog.text
    for secret in ("pw123456", "abcdefgh12345678", "hunter2x", "qk12345678"):
        assert secret not in text
    assert "postgresql://u:***@h/db" in text and "Bearer ***" in text and "password=***" in text
    access = [r for r in caplog.records if r.name == "uvicorn.access"][0]
    assert access.args[2] == "/v1/models?api_key=***"  # arguments kept apart: uvicorn's formatter unpacks them


# -- a stub model server that echoes what it is sent ---------------------------------------


class EchoingStub:
    """OpenAI-compatible chat endpoint on loopback (a test double). The first request with
    each Authorization value fails with a 500 that echoes the credentials (as real servers'
    error bodies do); then it answers SQL prompts with SQL and others with the user's
    message echoed."""

    def __init__(self) -> None:
        self.seen_auth: list[str] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                owner.handle(self)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_port

    def __enter__(self) -> EchoingStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        auth = handler.headers.get("Authorization", "")
        with self.lock:
            first = auth not in self.seen_auth
            self.seen_auth.append(auth)
        if first:
            credential = auth.partition(" ")[2]
            reply: dict[str, Any] = {"error": {"message": f"upstream refused Authorization: {auth} "
                                                          f"(credential {credential})", "type": "server_error"}}
            status = 500
        else:
            texts = "\n".join(str(m.get("content")) for m in body["messages"])
            user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
            text = "```sql\nSELECT COUNT(*) FROM t\n```" if "SQL" in texts else f"You said: {user}\nThe answer is 12."
            reply = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"} for i in range(body.get("n") or 1)],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
            status = 200
        data = json.dumps(reply).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def write_config(path: Path, port: int, base_pw: str) -> Path:
    path.write_text(f"""
[models.stub]
backend = "openai"
base_url = "http://127.0.0.1:{port}/v1"
model = "stub-model"
api_key_env = "RG_SECRETS_TEST_KEY"
retry = {{ initial_wait_s = 0, max_wait_s = 0 }}

[models.stub_userinfo]
backend = "openai"
base_url = "http://rguser:{base_pw}@127.0.0.1:{port}/v1"
model = "stub-model"
retry = {{ initial_wait_s = 0, max_wait_s = 0 }}

[roles]
default = "stub_userinfo"

[server]
api_key_env = "RG_SECRETS_SERVER_KEY"

[sql]
allow_privileged_postgres_role = true   # the test's database is reached as its superuser
""")
    return path


# -- the scan ---------------------------------------------------------------------------------


def scan(home: Path, needles: dict[str, str], outputs: dict[str, str]) -> dict[str, list[str]]:
    """Where each secret was found: store files (every byte), and the given outputs."""
    found: dict[str, list[str]] = {}
    places = {p.name: p.read_bytes() for p in home.glob("traces.sqlite*")}
    assert "traces.sqlite" in places
    places.update({name: text.encode() for name, text in outputs.items()})
    for label, secret in needles.items():
        for place, data in places.items():
            if secret.encode() in data:
                found.setdefault(label, []).append(place)
    return found


def readers(run_ids: list[str], home: Path) -> dict[str, str]:
    """What every reader of the store prints or sends: list, show, export, html, verify,
    OpenTelemetry."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from refinegraph.trace.otel import export_run
    from refinegraph.trace.store import TraceStore

    cli = CliRunner()
    listing = cli.invoke(cli_app, ["trace", "list", "--json"])
    assert listing.exit_code == 0, listing.output
    out: dict[str, str] = {"list": listing.output}
    for run_id in run_ids:
        for name, args in (("show", ["trace", "show", run_id, "--json"]), ("export", ["trace", "export", run_id]),
                           ("html", ["trace", "html", run_id, "-o", "-"]), ("verify", ["trace", "verify", run_id])):
            result = cli.invoke(cli_app, args)
            assert result.exit_code == 0, (name, result.output)
            out[f"{name} {run_id[:8]}"] = result.output
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = TraceStore(home / "traces.sqlite")
    try:
        for run_id in run_ids:
            export_run(store, run_id, provider, capture_content=True)
    finally:
        store.close()
    out["otel"] = json.dumps([{"name": s.name, "attributes": dict(s.attributes or {}),
                               "events": [dict(e.attributes or {}) for e in s.events]}
                              for s in exporter.get_finished_spans()], default=str)
    return out


@pytest.fixture
def secret_env(monkeypatch, tmp_path):
    """Fresh secrets (unknown to the process until a path reads them) and a config."""
    values = {"api_key": "rgk" + secrets.token_hex(12), "server_key": "srv" + secrets.token_hex(12),
              "base_pw": "bpw" + secrets.token_hex(8), "bearer": "tok" + secrets.token_hex(12),
              "header_key": "hdr" + secrets.token_hex(12), "sk": "sk-" + secrets.token_hex(16),
              "db_pw": "S3cretPW" + secrets.token_hex(4)}
    monkeypatch.setenv("RG_SECRETS_TEST_KEY", values["api_key"])
    monkeypatch.setenv("RG_SECRETS_SERVER_KEY", values["server_key"])
    return values


def needles_of(values: dict[str, str]) -> dict[str, str]:
    basic = base64.b64encode(f"rguser:{values['base_pw']}".encode()).decode()
    return {**values, "basic_auth": basic}


def test_cli_db_url_and_api_key_env_never_stored(secret_env, rg_home, tmp_path, caplog):
    """`refinegraph sql --db postgresql://user:PASSWORD@...` with a model whose key comes from
    api_key_env and whose server echoes it in an error: nothing of either is kept."""
    from conftest import require_pg

    PG_DSN = require_pg()  # noqa: N806 - the module's name for it, kept
    import psycopg

    caplog.set_level(logging.DEBUG)
    schema = "rg_secrets_" + secrets.token_hex(4)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (x integer)")
        conn.execute(f"INSERT INTO {schema}.t VALUES (1), (2), (3)")
    parts = urlsplit(PG_DSN)
    netloc = f"{parts.username}:{secret_env['db_pw']}@{parts.hostname}:{parts.port or 5432}"
    db = urlunsplit((parts.scheme, netloc, parts.path, f"schema={schema}", ""))
    try:
        with EchoingStub() as stub:
            cfg = write_config(tmp_path / "rg.toml", stub.port, secret_env["base_pw"])
            result = CliRunner().invoke(cli_app, ["sql", "How many rows are in t?", "--db", db, "--graph",
                                                  "sql-greedy", "--config", str(cfg), "--model", "stub", "--json"])
            assert result.exit_code == 0, result.output
            data = json.loads(result.stdout)
            assert data["rows"] == [[3]]
            # the stub saw the key, and its first answer echoed it back (a retry was recorded)
            assert f"Bearer {secret_env['api_key']}" in stub.seen_auth
            bad = CliRunner().invoke(cli_app, ["sql", "q", "--db", db.replace("postgresql", "mysql", 1)])
            assert bad.exit_code == 2 and "unsupported database" in bad.output
            # a replay reads the redacted URL back and connects without the password
            # (libpq's PGPASSWORD or ~/.pgpass supply it where the server asks for one)
            replayed = CliRunner().invoke(cli_app, ["trace", "replay", data["run_id"], "--config", str(cfg), "--json"])
            assert replayed.exit_code == 0, replayed.output
            assert json.loads(replayed.stdout)["model_calls"] == 0
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    run_id = data["run_id"]
    from refinegraph.trace.store import TraceStore

    found = scan(rg_home, {"db_pw": secret_env["db_pw"], "api_key": secret_env["api_key"]},
                 {"cli": result.output + bad.output + replayed.output, **readers([run_id], rg_home),
                  "logs": caplog.text})
    assert found == {}
    store = TraceStore(rg_home / "traces.sqlite")
    try:
        events = store.events(run_id)
    finally:
        store.close()
    retries = [e for e in events if e["type"] == "retry"]
    assert retries and "upstream refused Authorization: Bearer ***" in retries[0]["message"]
    assert events[0]["input"]["db"].startswith(f"postgresql://{parts.username}:***@")


def test_served_requests_headers_and_keys_never_stored(secret_env, rg_home, tmp_path, caplog):
    """A served request with an Authorization header, to a model whose base_url holds a
    password, whose messages carry header lines, a bearer token, an sk- key and the
    server's own key: the model sees them, the trace keeps none."""
    from refinegraph.trace.otel import disable_live, enable_live
    from refinegraph.trace.store import TraceStore

    caplog.set_level(logging.DEBUG)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    live_spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(live_spans))
    live = enable_live(provider, capture_content=True)
    message = (f"Why does curl -H 'Authorization: Bearer {secret_env['bearer']}' -H 'x-api-key: "
               f"{secret_env['header_key']}' fail? My OpenAI key is {secret_env['sk']} and the server "
               f"key is {secret_env['server_key']}. Also: what is 3 times 4?")
    store = TraceStore(rg_home / "traces.sqlite")
    try:
        with EchoingStub() as stub:
            config = load_config(write_config(tmp_path / "rg.toml", stub.port, secret_env["base_pw"]))
            app = create_app(config, store=store)
            with LiveServer(app, log_level="debug") as base_url:
                client = openai.OpenAI(base_url=base_url, api_key=secret_env["server_key"], max_retries=0)
                reply = client.chat.completions.create(model="greedy", messages=[{"role": "user", "content": message}])
                client.close()
            assert stub.seen_auth[0].startswith("Basic ")  # the base_url's password went upstream
        run_ids = [r["run_id"] for r in store.runs()]
        assert len(run_ids) == 1
        assert "12" in (reply.choices[0].message.content or "")
        events = store.events(run_ids[0])
        outputs = {**readers(run_ids, rg_home), "logs": caplog.text}
    finally:
        disable_live(live)
        store.close()
    outputs["otel live"] = json.dumps([dict(s.attributes or {}) for s in live_spans.get_finished_spans()],
                                      default=str)
    assert live_spans.get_finished_spans()
    assert scan(rg_home, needles_of(secret_env), outputs) == {}
    assert events[0]["input"]["task"].startswith("Why does curl -H 'Authorization: Bearer ***' -H 'x-api-key: ***'")
    assert events[0]["models"]["stub_userinfo"]["base_url"] == f"http://rguser:***@127.0.0.1:{stub.port}/v1"


# -- replay and resume still find their recorded calls ----------------------------------------


async def test_replay_of_a_run_whose_messages_held_secrets(store):
    """The trace holds `***` where the input held a secret; the replay re-runs from that
    input, so its requests differ from the original's: the cache keys hash the redacted
    request, and it still finds every call."""
    key = "kv" + secrets.token_hex(8)
    register_secret(key)
    task = f"My key is sk-{secrets.token_hex(16)}, the other {key}; Authorization: Bearer abcdefgh1234. What is 3*4?"
    model = ScriptedModel(lambda messages: f"You said {messages[-1]['content']}. The answer is 12.", name="local")
    result = await run("self-consistency", task, params={"n": 3}, store=store, models={"local": model},
                       checkpoint=False)
    assert key not in json.dumps(store.events(result.run_id))
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.cache_hits >= 1
    assert replayed.decisions_match and replayed.answer_matches


async def test_resume_of_a_run_whose_messages_held_secrets(store, monkeypatch):
    """A crash after the critic answered: the resume runs again from the recorded (redacted)
    input and is served both finished calls from the trace, whose keys are of the redacted
    requests."""
    from refinegraph.tools import structured

    model = scripted_by_role([verdict(9, done=True)])
    real_parse = structured.parse_structured
    calls = {"n": 0}

    def parse_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("crash after the model answered")
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(structured, "parse_structured", parse_then_crash)
    task = f"Explain password=hunter2{secrets.token_hex(4)} and sk-{secrets.token_hex(16)} to a child."
    with pytest.raises(RunFailed) as failed:
        await run("self-refine", task, store=store, models={"local": model})
    run_id = failed.value.result.run_id
    result = await resume(run_id, store=store, models={"local": model})
    assert model.counters == {"solver": 1, "critic": 1, "refiner": 0}
    assert result.cache_hits == 2 and result.stop_reason == "done"
