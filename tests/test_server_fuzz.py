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
    return await fuzz_section(examples=5, seed=1, concurrent=60)


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
    assert f["runs_recorded"] == f["responses_200"] == fuzzed.runs
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
    request = doc["components"]["schemas"]["ChatRequest"]
    pipelines, proxied = request["properties"]["model"]["anyOf"]
    assert pipelines["enum"] == ["math-sc", "plain", "refine", "sql", "sql-open"]
    assert proxied["pattern"].startswith("^(") and "|greedy|" in proxied["pattern"]  # GRAPH:UPSTREAM
    assert request["properties"]["messages"]["maxItems"] == 64
    assert doc["components"]["schemas"]["RefinegraphExtra"]["additionalProperties"] is False
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert KEY_ENV not in json.dumps(doc)


async def test_the_document_allows_db_and_evidence_only_where_the_server_takes_them(tmp_path):
    """The document allowed `refinegraph.evidence` for every model while the server answers
    400 for a non-SQL pipeline: a body valid by the document must not be refused for it."""
    import jsonschema

    app, store = fuzz_app(tmp_path, KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        async with asgi(app) as http:
            doc = (await http.get("/openapi.json", headers=auth)).json()
            statuses = {}
            for model in ("plain", "sql", "greedy:local", "sql-greedy:local"):
                body = chat_body(model=model, refinegraph={"evidence": "units are whole numbers"})
                resolver = {"$ref": "#/components/schemas/ChatRequest", "components": doc["components"]}
                valid = jsonschema.Draft202012Validator(resolver).is_valid(body)
                response = await http.post(CHAT, json=body, headers=auth)
                statuses[model] = (valid, response.status_code, response.json().get("error", {}).get("message", ""))
    finally:
        store.close()
    for model in ("plain", "greedy:local"):  # invalid by the document, refused by the server
        assert statuses[model][:2] == (False, 400) and "SQL graphs only" in statuses[model][2]
    assert statuses["sql"][:2] == (True, 200)
    # valid by the document; this server fixes no database for ad-hoc SQL graphs (another 400)
    valid, status, message = statuses["sql-greedy:local"]
    assert valid and "SQL graphs only" not in message


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
