"""The server under hostile requests (schemathesis from its own OpenAPI document, and
hand-written ones over a real socket) and under load, through benchmarks'
reliability_fuzz and reliability_load.

The fuzzing runs on scripted models (a test double), so every run is instant and healthy;
the load test needs the embedded model. Timing goals are the bench's, never asserted here."""

from __future__ import annotations

import json

import httpx
import pytest

from benchmarks.reliability_fuzz import (
    BAD_CREDENTIALS,
    CHAT,
    KEY_ENV,
    ThreadServer,
    bad_credential,
    chat_body,
    fuzz_app,
    fuzz_section,
    hostile_requests,
    raw_exchange,
)
from benchmarks.reliability_load import load_section

KEY = "fuzz-test-key"


@pytest.fixture(scope="module")
async def fuzzed():
    """One bounded fuzz run (a few hundred schemathesis cases) shared by the tests below."""
    return await fuzz_section(examples=5, seed=1, concurrent=60, max_coverage_cases=1500)


def asgi(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                             base_url="http://rg.test")


async def test_schemathesis_cases_get_no_5xx_and_conform_to_the_schema(fuzzed):
    f = fuzzed.figures
    assert fuzzed.ok, fuzzed.problems
    assert f["schemathesis_cases"] >= 200  # coverage cases plus 5 per operation and mode
    assert f["coverage_cases"] > 100
    assert f["server_errors_5xx"] == 0 and f["server_error_logs"] == 0
    assert not any(int(status) >= 500 for status in f["statuses"])
    assert f["conformance_failures"] == {}
    assert f["transport_errors"] == 0
    # the generated bodies reach pipelines (200s) and are refused for what they get wrong
    assert f["responses_200"] > 0 and f["statuses"].get("400", 0) > 0 and f["statuses"].get("415", 0) > 0


async def test_every_200_records_one_run_and_no_refused_request_records_any(fuzzed):
    f = fuzzed.figures
    assert f["runs_recorded"] == f["responses_200"] + f["no_answer_422"] == fuzzed.runs
    assert f["runs_by_refused_requests"] == 0
    assert f["runs_started_without_auth"] == 0
    assert fuzzed.traces_verified == fuzzed.runs and fuzzed.traces_failed == 0
    # each authorized case was also sent with a missing or wrong key
    assert f["auth_twins"] > 100
    assert f["statuses"]["401"] >= f["auth_twins"]


@pytest.mark.parametrize("name, status", [
    ("truncated JSON", 400), ("a JSON array", 400), ("no content type", 415), ("text/plain", 415),
    ("form-urlencoded", 415), ("body over the limit", 413), ("declared over the limit, small body", 413),
    ("declared short, long body sent", 400), ("chunked over the limit", 413), ("nested 30000 deep", 400),
    ("nested 100 deep in params", 400), ("an integer of 6000 digits", 400), ("budget of 10**30 tokens", 400),
    ("max_tokens of 10**20", 400), ("a float overflowing to infinity", 400), ("NaN", 400), ("0xff bytes", 400),
    ("escaped lone surrogate", 400), ("UTF-8-encoded surrogate", 400), ("a non-database file as db", 400),
    ("a db path too long", 400), ("auth missing", 401), ("auth wrong key", 401), ("auth missing, oversized", 401),
    ("auth missing, streaming", 401), ("auth missing, openapi", 401), ("GET on chat", 405),
])
async def test_hand_written_hostile_requests_are_refused_as_expected(fuzzed, name, status):
    assert fuzzed.figures["handwritten_statuses"][name] == status


async def test_hostile_requests_are_counted_and_the_server_stays_up(fuzzed):
    f = fuzzed.figures
    assert f["handwritten_requests"] == len(hostile_requests(KEY)) > 50
    assert f["concurrent_bad_requests"] == 60
    assert fuzzed.faults_injected == f["hostile_requests"] >= f["handwritten_requests"] + 60 + f["auth_twins"]
    # a body cut off mid-way gets no answer but leaves no error in the server's log
    assert f["handwritten_statuses"]["declared long, body cut off"] in (0, 400)
    assert any("hostile requests at once" in line for line in fuzzed.lines)


async def test_a_body_refused_mid_upload_gets_its_413_not_a_reset(tmp_path):
    """Over a real socket, a chunked body past the limit: the server drains it before closing.
    Without the drain about 1 try in 6 read a reset instead of the status (measured 10/60)."""
    app, store = fuzz_app(tmp_path, KEY)
    [case] = [h for h in hostile_requests(KEY) if h.name == "chunked over the limit"]
    try:
        async with ThreadServer(app) as server:
            statuses = [await raw_exchange(server.port, case.raw, half_close=False) for _ in range(200)]
    finally:
        store.close()
    assert statuses == [413] * 200, statuses


async def test_no_run_is_recorded_without_a_valid_key(tmp_path):
    app, store = fuzz_app(tmp_path, KEY)
    bodies = [chat_body(), chat_body(stream=True), chat_body(model="math-sc", refinegraph={"params": {"n": 2}})]
    try:
        async with asgi(app) as http:
            for i in range(len(BAD_CREDENTIALS)):
                credential = bad_credential(i, KEY)
                headers = {"Content-Type": "application/json", **({"Authorization": credential} if credential else {})}
                for body in bodies:
                    response = await http.post(CHAT, content=json.dumps(body).encode(), headers=headers)
                    assert response.status_code == 401, (credential, response.text)
                    assert response.headers["www-authenticate"] == "Bearer"
            assert store.all_runs() == []
            good = await http.post(CHAT, json=chat_body(), headers={"Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200 and good.json()["refinegraph"]["answer"] == "12"
        assert len(store.all_runs()) == 1
    finally:
        store.close()


async def test_openapi_describes_the_real_body_behind_the_key(tmp_path):
    app, store = fuzz_app(tmp_path, KEY)
    try:
        async with asgi(app) as http:
            refused = await http.get("/openapi.json")
            doc = (await http.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"})).json()
    finally:
        store.close()
    assert refused.status_code == 401
    chat = doc["paths"][CHAT]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ChatRequest"
    assert chat["security"] == [{"bearer": []}]
    assert {"200", "400", "401", "404", "413", "415", "422", "502"} <= set(chat["responses"])
    schemas = doc["components"]["schemas"]
    bodies = [schemas[ref["$ref"].rsplit("/", 1)[1]] for ref in schemas["ChatRequest"]["oneOf"]]
    names = {b["properties"]["model"].get("const") for b in bodies} - {None}
    assert names == {"math-sc", "plain", "refine", "sql", "sql-open"}
    patterns = {b["properties"]["model"].get("pattern") for b in bodies} - {None}
    # GRAPH:UPSTREAM: the configured upstreams, a list only for a graph that takes `models`
    assert {"^greedy:(local)$", "^sql\\-greedy:(local)$", "^acar:(local)(,(local)){0,2}$"} <= patterns
    assert all(b["properties"]["messages"]["maxItems"] == 64 for b in bodies)
    assert doc["components"]["schemas"]["RefinegraphExtra"]["additionalProperties"] is False
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert KEY_ENV not in json.dumps(doc)


async def document_and_server(tmp_path, bodies: list[dict]) -> list[tuple[bool, int, str]]:
    """Per body: whether the server's own OpenAPI document allows it, the status the server
    answers, and its error message."""
    import jsonschema

    app, store = fuzz_app(tmp_path, KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    seen = []
    try:
        async with asgi(app) as http:
            doc = (await http.get("/openapi.json", headers=auth)).json()
            validator = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/ChatRequest",
                                                         "components": doc["components"]})
            for body in bodies:
                response = await http.post(CHAT, content=json.dumps(body), headers={
                    **auth, "content-type": "application/json"})
                seen.append((validator.is_valid(body), response.status_code,
                             response.json().get("error", {}).get("message", "")))
    finally:
        store.close()
    return seen


async def test_the_document_allows_db_and_evidence_only_where_the_server_takes_them(tmp_path):
    """The document allowed `refinegraph.evidence` for every model while the server answers
    400 for a non-SQL pipeline: a body valid by the document must not be refused for it."""
    models = ("plain", "sql", "greedy:local", "sql-greedy:local")
    seen = await document_and_server(tmp_path, [chat_body(model=m, refinegraph={"evidence": "units are whole"})
                                                for m in models])
    statuses = dict(zip(models, seen, strict=True))
    for model in ("plain", "greedy:local"):  # invalid by the document, refused by the server
        assert statuses[model][:2] == (False, 400) and "SQL graphs only" in statuses[model][2]
    assert statuses["sql"][:2] == (True, 200)
    # an ad-hoc SQL graph needs a database the request names: both say so
    assert statuses["sql-greedy:local"][:2] == (False, 400)


AGREEMENT = [  # (what, body, allowed): each was allowed by one of the document and the server only
    ("max_tokens written 500.0 is the integer 500", chat_body(max_tokens=500.0), True),
    ("an empty user turn after the question", chat_body(messages=[
        {"role": "user", "content": "What is 3 times 4?"}, {"role": "user", "content": ""}]), True),
    ("a 70-bit integer in a message's extra key", chat_body(messages=[
        {"role": "user", "content": "What is 3 times 4?", "x-trace": 2**70}]), False),
    ("a boolean for an integer param", chat_body(model="math-sc", refinegraph={"params": {"n": False}}), False),
    ("a param the graph does not take", chat_body(refinegraph={"params": {"n_samples": 3}}), False),
    ("tool_choice without tools", chat_body(tool_choice="required"), False),
    ("tools for a graph that takes none", chat_body(model="sets:local", tools=[
        {"type": "function", "function": {"name": "add"}}]), False),
    ("tools with a number answer", chat_body(model="greedy:local", tools=[
        {"type": "function", "function": {"name": "add"}}], refinegraph={"params": {"answer": "number"}}), False),
    ("a budget over the pipeline's", chat_body(model="math-sc", refinegraph={"budget": {"tokens": 5000}}), False),
    ("a db for a pipeline that fixes its own", chat_body(model="sql", refinegraph={"db": "shop"}), False),
    ("an upstream the config does not name", chat_body(model="greedy:nope"), False),
    ("two upstreams for a graph that takes one", chat_body(model="greedy:local,local"), False),
    ("a db the server names, for a pipeline without one", chat_body(model="sql-open", refinegraph={"db": "shop"}),
     True),
    ("SETS past the step limit", chat_body(model="sets:local", refinegraph={"params": {"m": 64}}), False),
    ("SETS within the step limit", chat_body(model="sets:local", refinegraph={"params": {"m": 39}}), True),
    ("a beam wider than the beams", chat_body(model="beam-search:local", refinegraph={"params": {"n": 1}}), False),
    ("approval asked for a streamed run", chat_body(model="sql", stream=True,
                                                   refinegraph={"params": {"approve": True}}), False),
]


@pytest.mark.parametrize("what, body, allowed", AGREEMENT, ids=[a[0] for a in AGREEMENT])
async def test_the_document_allows_exactly_what_the_server_takes(tmp_path, what, body, allowed):
    [(valid, status, message)] = await document_and_server(tmp_path, [body])
    assert valid == allowed, f"the document {'refuses' if allowed else 'allows'} it"
    assert status == 200 if allowed else status in (400, 404), f"the server answered {status}: {message}"


@pytest.mark.local
async def test_a_short_load_on_the_embedded_model_has_no_errors_and_reports_its_figures():
    section = await load_section(clients=4, seconds=5)
    f = section.figures
    assert f["errors"] == 0 and f["error_rate"] == 0.0, section.problems
    assert f["requests_completed"] > 0
    assert section.runs == f["runs_recorded"] == f["requests_completed"] + 1  # and the warm-up request
    assert section.traces_verified == section.runs and section.traces_failed == 0
    assert f["latency_p99_s"] >= f["latency_p50_s"] > 0
    assert f["rss_mib_start"] > 0 and f["rss_mib_end"] > 0 and len(f["rss_samples"]) > 3
    assert "rss_growth_after_warmup" in f and f["server_exit_code"] == 0
    assert any("requests completed" in line for line in section.lines)


DECISIONS = [({"decision": "approve"}, True), ({"decision": "refuse", "by": "ops", "sql": None}, True),
             ({"decision": "edit", "sql": "SELECT 1"}, True), ({"decision": "edit"}, False),
             ({"decision": "edit", "sql": " \n"}, False), ({"decision": "approve", "sql": ""}, False),
             ({"decision": "refuse", "sql": "SELECT 1"}, False)]


@pytest.mark.parametrize("body, allowed", DECISIONS)
def test_the_approval_document_allows_exactly_the_decisions_taken(body, allowed):
    """The document allowed an edit without SQL and SQL with approve, which the server refuses."""
    import jsonschema
    from pydantic import ValidationError

    from refinegraph.human import Decision
    from refinegraph.server.approval_routes import DECIDE_OPERATION

    schema = DECIDE_OPERATION["requestBody"]["content"]["application/json"]["schema"]
    try:
        Decision.model_validate(body)
        taken = True
    except ValidationError:
        taken = False
    assert (jsonschema.Draft202012Validator(schema).is_valid(body), taken) == (allowed, allowed)


async def test_a_pipeline_param_from_toml_as_a_float_does_not_refuse_requests(tmp_path):
    """Requests are checked strictly as JSON types, the pipeline's own params leniently (as at
    load): `n = 3.0` in a config file must not turn every request to that pipeline into a 400."""
    from benchmarks.reliability_fuzz import FUZZ_REPLY
    from refinegraph.config import Config, ConfigError
    from refinegraph.models.scripted import ScriptedModel
    from refinegraph.server import create_app
    from refinegraph.trace.store import TraceStore

    store = TraceStore(tmp_path / "traces.sqlite")
    config = Config.model_validate({"pipelines": {"sc": {"graph": "self-consistency", "params": {"n": 3.0}}}})
    app = create_app(config, models={"local": ScriptedModel(lambda messages: FUZZ_REPLY, name="local")}, store=store)
    try:
        async with asgi(app) as http:
            response = await http.post(CHAT, json=chat_body(model="sc", refinegraph={"params": {"seed": 1}}))
    finally:
        store.close()
    assert response.status_code == 200, response.text
    with pytest.raises(ConfigError, match="no colon"):
        create_app(Config.model_validate({"pipelines": {"greedy:fast": {"graph": "greedy"}}}), store=store)
