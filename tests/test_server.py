"""`refinegraph serve`: the OpenAI-compatible server, driven by the official openai client
and LangChain's ChatOpenAI, on scripted models (test doubles) so every path is forced."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from benchmarks.stub_server import LiveServer
from refinegraph.cli import serve_cmd
from refinegraph.cli.app import app as cli_app
from refinegraph.config import Config, ConfigError, load_config
from refinegraph.models import ScriptedModel
from refinegraph.registry import list_graphs
from refinegraph.server import body, create_app

from conftest import scripted_by_role, verdict

QUESTION = "What is 3 times 4?"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "serve.toml"


def config(**server) -> Config:
    return Config.model_validate({
        "pipelines": {
            "math-sc": {"graph": "self-consistency", "params": {"n": 3}, "budget": {"tokens": 4000}},
            "plain": {"graph": "greedy"},
            "refine": {"graph": "self-refine"},
            "sql": {"graph": "sql-greedy"},
        },
        "server": server,
    })


def twelve() -> ScriptedModel:
    return ScriptedModel(lambda messages: "3 times 4 is 12. The answer is 12.", name="local")


class Slow(ScriptedModel):
    """A scripted model whose calls take time, counting how many run at once."""

    def __init__(self, script, delay: float = 0.3, **kwargs):
        super().__init__(script, **kwargs)
        self.delay, self.active, self.peak = delay, 0, 0

    async def sample(self, messages, **kwargs):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            return await super().sample(messages, **kwargs)
        finally:
            self.active -= 1


def asgi_client(app, api_key: str = "unused", max_retries: int = 0) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rg.test")
    return openai.AsyncOpenAI(base_url="http://rg.test/v1", api_key=api_key, http_client=http,
                              max_retries=max_retries)


def raw_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rg.test")


def run_count(store) -> int:
    return len(store.runs())


# -- listing ------------------------------------------------------------------------------


async def test_models_lists_the_configured_pipelines(store):
    client = asgi_client(create_app(config(), models={"local": twelve()}, store=store))
    models = await client.models.list()
    assert sorted(m.id for m in models.data if ":" not in m.id) == ["math-sc", "plain", "refine", "sql"]
    card = next(m for m in models.data if m.id == "math-sc")
    assert card.model_extra["refinegraph"]["graph"] == "self-consistency"
    assert card.model_extra["refinegraph"]["budget"]["tokens"] == 4000
    assert (await client.models.retrieve("plain")).model_extra["refinegraph"]["graph"] == "greedy"


async def test_without_pipelines_every_graph_is_served_under_its_name(store):
    client = asgi_client(create_app(Config(), models={"local": twelve()}, store=store))
    ids = sorted(m.id for m in (await client.models.list()).data if ":" not in m.id)
    assert ids == sorted(g.name for g in list_graphs())
    reply = await client.chat.completions.create(model="greedy", messages=[{"role": "user", "content": QUESTION}])
    assert reply.choices[0].message.content == "3 times 4 is 12. The answer is 12."
    assert reply.model == "greedy"


def test_bad_pipeline_config_fails_at_start(store):
    with pytest.raises(ConfigError, match="pipeline 'x'.*unknown graph"):
        create_app(Config.model_validate({"pipelines": {"x": {"graph": "nope"}}}), store=store)
    with pytest.raises(ConfigError, match="pipeline 'x'.*bad parameters"):
        create_app(Config.model_validate({"pipelines": {"x": {"graph": "greedy", "params": {"n": 3}}}}), store=store)
    with pytest.raises(ConfigError, match="unknown model 'gpt'"):
        create_app(Config.model_validate({"pipelines": {"x": {"graph": "greedy", "roles": {"default": "gpt"}}}}),
                   store=store)
    # ACAR's params name the models it routes to: one the config lacks fails here, not per request.
    acar = {"graph": "acar", "params": {"models": ["local", "gpt4"]}}
    with pytest.raises(ConfigError, match="pipeline 'x'.*calls models the config does not define: gpt4"):
        create_app(Config.model_validate({"pipelines": {"x": acar}}), store=store)
    with pytest.raises(ConfigError, match="does not define: big"):
        create_app(Config.model_validate({"pipelines": {"x": {"graph": "acar", "params": {"probe_model": "big"}}}}),
                   store=store)


def test_example_config_loads_and_serves(store, monkeypatch):
    monkeypatch.setenv("REFINEGRAPH_API_KEY", "k")
    cfg = load_config(EXAMPLE)
    app = create_app(cfg, models={"local": twelve()}, store=store)
    assert set(app.state.server.pipelines) == set(cfg.pipelines)
    assert cfg.server.api_key_env == "REFINEGRAPH_API_KEY"


# -- one completion -----------------------------------------------------------------------


async def test_completion_answers_with_usage_of_every_call_and_the_run_id(store):
    client = asgi_client(create_app(config(), models={"local": twelve()}, store=store))
    raw = await client.chat.completions.with_raw_response.create(
        model="math-sc", messages=[{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": QUESTION}])
    run_id = raw.headers["x-refinegraph-run-id"]
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.model == "math-sc"
    assert reply.id == f"chatcmpl-{run_id}"
    assert reply.choices[0].message.content == "3 times 4 is 12. The answer is 12."
    assert reply.choices[0].finish_reason == "stop"
    calls = store.events(run_id, types={"llm_call"})
    assert reply.usage.prompt_tokens == sum(c["prompt_tokens"] for c in calls) > 0
    assert reply.usage.completion_tokens == sum(c["completion_tokens"] for c in calls) > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    meta = reply.model_extra["refinegraph"]
    assert meta["run_id"] == run_id and meta["stop_reason"] == "done"
    assert meta["model_calls"] == sum(c["requests"] for c in calls)
    assert meta["fallbacks"] == {}
    started = store.events(run_id, types={"run_started"})[0]
    assert started["input"] == {"task": QUESTION}
    assert started["params"] == {"n": 3} and started["budget"]["tokens"] == 4000
    assert store.events(run_id, types={"vote"})[0]["winner"] == "12"


async def test_usage_sums_several_calls(store):
    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    client = asgi_client(create_app(config(), models={"local": model}, store=store))
    raw = await client.chat.completions.with_raw_response.create(
        model="refine", messages=[{"role": "user", "content": "Explain the sky."}])
    reply, run_id = raw.parse(), raw.headers["x-refinegraph-run-id"]
    assert reply.choices[0].message.content == "refiner answer 1"
    calls = store.events(run_id, types={"llm_call"})
    assert len(calls) == 4 and reply.model_extra["refinegraph"]["model_calls"] == 4
    assert reply.usage.total_tokens == sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls)


async def test_extra_body_params_and_budget_reach_the_run(store):
    client = asgi_client(create_app(config(), models={"local": twelve()}, store=store))
    raw = await client.chat.completions.with_raw_response.create(
        model="math-sc", messages=[{"role": "user", "content": QUESTION}],
        extra_body={"refinegraph": {"params": {"n": 2, "temperature": 0.5}, "budget": {"tokens": 900}}})
    run_id = raw.headers["x-refinegraph-run-id"]
    started = store.events(run_id, types={"run_started"})[0]
    assert started["params"] == {"n": 2, "temperature": 0.5}
    assert started["budget"]["tokens"] == 900
    assert store.events(run_id, types={"vote"})[0]["groups"][0]["members"] == [0, 1]


@pytest.mark.parametrize("extra, status, needle", [
    ({"params": {"bogus": 1}}, 400, "bogus"),
    ({"params": {"n": 0}}, 400, "n:"),
    ({"params": {"n": "many"}}, 400, "n:"),
    ({"budget": {"tokens": 5000}}, 400, "maximum of 4000"),
    ({"budget": {"dollars": 1}}, 400, "dollars"),
    ({"paramz": {}}, 400, "paramz"),
    ({"db": "x.sqlite"}, 400, "SQL graphs only"),
    ("n=3", 400, "refinegraph"),
])
async def test_bad_refinegraph_extra_is_refused_before_any_run(store, extra, status, needle):
    client = asgi_client(create_app(config(), models={"local": twelve()}, store=store))
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="math-sc", messages=[{"role": "user", "content": QUESTION}],
                                             extra_body={"refinegraph": extra})
    assert caught.value.status_code == status
    assert needle in caught.value.message
    assert run_count(store) == 0


# -- streaming ----------------------------------------------------------------------------


async def test_streaming_with_the_openai_client(store):
    client = asgi_client(create_app(config(), models={"local": twelve()}, store=store))
    stream = await client.chat.completions.create(model="math-sc", stream=True,
                                                  messages=[{"role": "user", "content": QUESTION}],
                                                  stream_options={"include_usage": True},
                                                  extra_body={"refinegraph": {"progress": True}})
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" and c.model == "math-sc" for c in chunks)
    run_id = chunks[0].model_extra["refinegraph"]["run_id"]
    events = [c.model_extra["refinegraph"]["event"] for c in chunks if "event" in (c.model_extra or {}).get(
        "refinegraph", {})]
    assert [e["seq"] for e in events] == list(range(len(store.events(run_id))))
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert {"node_started", "node_finished", "llm_call", "vote", "stop"} <= set(types)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "3 times 4 is 12. The answer is 12."
    # the answer comes after every progress event, then the finishing chunk, then usage
    answer_at = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert all("event" not in (c.model_extra or {}).get("refinegraph", {}) for c in chunks[answer_at:])
    finishing, last = chunks[-2], chunks[-1]
    assert finishing.choices[0].finish_reason == "stop"
    assert finishing.model_extra["refinegraph"]["run_id"] == run_id
    calls = store.events(run_id, types={"llm_call"})
    assert last.choices == []
    assert last.usage.total_tokens == sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls)


async def test_stream_events_arrive_while_the_run_goes_on(store):
    model = scripted_by_role([verdict(4), verdict(5), verdict(9, done=True)])
    slow = Slow(model._script, delay=0.4, name="local")
    app = create_app(config(), models={"local": slow}, store=store)
    with LiveServer(app) as base_url:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="refine", stream=True, messages=[{"role": "user", "content": "Explain the sky."}],
            extra_body={"refinegraph": {"progress": True}})
        run_id = raw.headers["x-refinegraph-run-id"]
        calls_when_first_llm_event = None
        content = ""
        async for chunk in raw.parse():
            event = (chunk.model_extra or {}).get("refinegraph", {}).get("event")
            if event and event["type"] == "llm_call" and calls_when_first_llm_event is None:
                calls_when_first_llm_event = len(slow.calls)
            content += chunk.choices[0].delta.content or ""
    assert len(slow.calls) == 6  # solver, then (critic, refiner) x2, critic
    assert calls_when_first_llm_event is not None and calls_when_first_llm_event < 4
    assert content == "refiner answer 2"
    assert store.run(run_id)["status"] == "finished"


async def test_a_failed_run_streams_an_error_the_client_raises(store):
    def broken(messages):
        raise ValueError("backend exploded")

    client = asgi_client(create_app(config(), models={"local": ScriptedModel(broken, name="local")}, store=store))
    stream = await client.chat.completions.create(model="plain", stream=True,
                                                  messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.APIError, match="backend exploded") as caught:
        async for _ in stream:
            pass
    run_id = caught.value.body["run_id"]
    assert store.run(run_id)["status"] == "error"


# -- LangChain ----------------------------------------------------------------------------


async def test_langchain_chat_openai_invoke_and_stream(store):
    from langchain_openai import ChatOpenAI

    app = create_app(config(), models={"local": twelve()}, store=store)
    with LiveServer(app) as base_url:
        llm = ChatOpenAI(base_url=base_url, api_key="x", model="math-sc", max_retries=0)
        message = await llm.ainvoke("What is 3 times 4?")
        streamed = "".join([chunk.content async for chunk in llm.astream("What is 3 times 4?")])
    assert message.content == "3 times 4 is 12. The answer is 12."
    assert message.usage_metadata["total_tokens"] > 0
    assert streamed == "3 times 4 is 12. The answer is 12."
    assert run_count(store) == 2


# -- failures and refusals ----------------------------------------------------------------


async def test_a_failed_run_is_a_502_naming_the_run(store):
    def broken(messages):
        raise ValueError("backend exploded")

    app = create_app(config(), models={"local": ScriptedModel(broken, name="local")}, store=store)
    client = asgi_client(app, max_retries=2)  # the client's default: x-should-retry keeps it to one run
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="plain", messages=[{"role": "user", "content": QUESTION}])
    error = caught.value
    assert error.status_code == 502
    run_id = error.response.headers["x-refinegraph-run-id"]
    assert error.body["run_id"] == run_id and error.body["code"] == "run_failed"
    assert "backend exploded" in error.message
    assert store.run(run_id)["status"] == "error"
    assert run_count(store) == 1


async def test_auth_wrong_or_missing_key_is_401_and_starts_no_run(store, monkeypatch):
    monkeypatch.setenv("RG_TEST_KEY", "s3cret")
    model = twelve()
    app = create_app(config(api_key_env="RG_TEST_KEY"), models={"local": model}, store=store)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        await asgi_client(app, "wrong").chat.completions.create(
            model="plain", messages=[{"role": "user", "content": QUESTION}])
    async with raw_client(app) as http:
        missing = await http.post("/v1/chat/completions", json={"model": "plain",
                                                                  "messages": [{"role": "user", "content": "hi"}]})
        listing = await http.get("/v1/models")
    assert missing.status_code == 401 and "bearer" in missing.json()["error"]["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert listing.status_code == 401
    assert run_count(store) == 0 and model.calls == []
    reply = await asgi_client(app, "s3cret").chat.completions.create(
        model="plain", messages=[{"role": "user", "content": QUESTION}])
    assert reply.choices[0].message.content == "3 times 4 is 12. The answer is 12."


def test_auth_key_variable_must_be_set(store, monkeypatch):
    monkeypatch.delenv("RG_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="RG_TEST_KEY"):
        create_app(config(api_key_env="RG_TEST_KEY"), store=store)


async def test_unknown_pipeline_is_404_listing_the_known_ones(store):
    client = asgi_client(create_app(config(), models={"local": twelve()}, store=store))
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    assert "math-sc, plain, refine, sql" in caught.value.message
    with pytest.raises(openai.NotFoundError):  # a prefix names nothing: pipelines are picked by name only
        await client.chat.completions.create(model="refinegraph/greedy",
                                             messages=[{"role": "user", "content": QUESTION}])
    assert run_count(store) == 0


BAD_BODIES = [
    (b'{"model": "plain", "messages": [', 400, "not valid JSON"),
    (b'["plain"]', 400, "JSON object"),
    (json.dumps({"model": "plain", "messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"model": 3, "messages": [{"role": "user", "content": "hi"}]}).encode(), 400, "model"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), 400, "model: Field required"),
    (json.dumps({"model": "plain", "messages": []}).encode(), 400, "messages is empty"),
    (json.dumps({"model": "plain", "messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "role"),
    (json.dumps({"model": "plain", "messages": [{"role": "system", "content": "hi"}]}).encode(), 400,
     "no user message"),
    (json.dumps({"model": "plain", "messages": [{"role": "user", "content": "  "}]}).encode(), 400, "empty"),
    (json.dumps({"model": "plain", "messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), 400, "n=2"),
    (json.dumps({"model": "plain", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}).encode(),
     400, "stream"),
    (json.dumps({"model": "plain", "messages": [{"role": "user", "content": "hi"}] * 65}).encode(), 400,
     "too many messages"),
    (json.dumps({"model": "plain", "messages": [{"role": "user", "content": "x" * 32_001}]}).encode(), 400,
     "at most 32000"),
    (json.dumps({"model": "plain", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}).encode(), 400, "only text"),
    (json.dumps({"model": "sql", "messages": [{"role": "user", "content": "how many?"}]}).encode(), 400,
     "fixes none"),
    (json.dumps({"model": "sql", "messages": [{"role": "user", "content": "how many?"}],
                 "refinegraph": {"db": "/nonexistent/x.sqlite"}}).encode(), 400, "database"),
    (json.dumps({"model": "code-filter:local", "messages": [{"role": "user", "content": "add two numbers"}]}
                ).encode(), 400, "tests a function the task defines"),
    (json.dumps({"model": "plain", "messages": [{"role": "user", "content": "x" * (1 << 20)}]}).encode(), 413,
     "over 1048576 bytes"),
]


@pytest.mark.parametrize("body, status, needle", BAD_BODIES)
async def test_bad_requests_are_4xx_with_a_clear_message_and_no_run(store, body, status, needle):
    model = twelve()
    app = create_app(config(), models={"local": model}, store=store)
    async with raw_client(app) as http:
        response = await http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"]
    assert error["type"]
    assert run_count(store) == 0 and model.calls == []


async def test_chunked_oversized_body_is_413(store):
    app = create_app(config(max_body_bytes=2048), models={"local": twelve()}, store=store)

    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    async with raw_client(app) as http:
        response = await http.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413 and run_count(store) == 0


@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["fast", "slow"])
async def test_a_client_that_never_stops_sending_still_gets_its_413(store, pause):
    """The server drains a refused body (so the 413 is not lost to a reset) but only so far."""
    app = create_app(config(max_body_bytes=2048), models={"local": twelve()}, store=store)
    sent = 0

    async def endless():
        nonlocal sent
        while True:
            sent += 4096
            yield b" " * 4096
            await asyncio.sleep(pause)

    async with raw_client(app) as http:
        response = await asyncio.wait_for(http.post("/v1/chat/completions", content=endless()), 30)
    assert response.status_code == 413 and run_count(store) == 0
    assert sent <= body.DRAIN_BYTES + 3 * 4096  # the byte bound (fast) or the time bound (slow) ended it


async def test_unknown_routes_and_methods_stay_4xx(store):
    async with raw_client(create_app(config(), models={"local": twelve()}, store=store)) as http:
        missing = await http.get("/v1/completions")
        wrong_method = await http.get("/v1/chat/completions")
    assert missing.status_code == 404 and "/v1/chat/completions" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405


async def test_sql_pipeline_takes_the_db_by_its_configured_name(store, tmp_path):
    db = tmp_path / "shop.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (name TEXT)")
        conn.executemany("INSERT INTO items VALUES (?)", [("a",), ("b",)])
    model = ScriptedModel(lambda messages: "```sql\nSELECT COUNT(*) FROM items\n```", name="local")
    cfg = config(allow_request_db=True, databases={"shop": str(db)})
    client = asgi_client(create_app(cfg, models={"local": model}, store=store))
    raw = await client.chat.completions.with_raw_response.create(
        model="sql", messages=[{"role": "user", "content": "How many items?"}],
        extra_body={"refinegraph": {"db": "shop"}})
    started = store.events(raw.headers["x-refinegraph-run-id"], types={"run_started"})[0]
    assert started["input"] == {"question": "How many items?", "db": str(db)}
    assert "2" in raw.parse().choices[0].message.content


async def test_concurrent_runs_are_bounded_by_the_semaphore(store):
    for bound, expected in ((1, 1), (3, 3)):
        slow = Slow(lambda messages: "The answer is 12.", delay=0.2, name="local")
        client = asgi_client(create_app(config(max_concurrent_runs=bound), models={"local": slow}, store=store))
        replies = await asyncio.gather(*[
            client.chat.completions.create(model="plain", messages=[{"role": "user", "content": QUESTION}])
            for _ in range(4)])
        assert [r.choices[0].message.content for r in replies] == ["The answer is 12."] * 4
        assert slow.peak == expected


def test_cli_without_the_serve_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(serve_cmd, "missing_serve_deps", lambda: ["fastapi"])
    result = CliRunner().invoke(cli_app, ["serve"])
    assert result.exit_code == 2
    assert "pip install 'refinegraph[serve]'" in result.output


# -- the embedded model -------------------------------------------------------------------


@pytest.mark.local
async def test_default_pipelines_on_the_embedded_model(store):
    app = create_app(Config(), store=store)
    client = asgi_client(app)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="greedy", messages=[{"role": "user", "content": "What is 2 + 3?"}],
            extra_body={"refinegraph": {"params": {"max_tokens": 48}}})
    finally:
        await app.state.server.pool.aclose()
    reply, run_id = raw.parse(), raw.headers["x-refinegraph-run-id"]
    assert reply.model_extra["refinegraph"]["model_calls"] == 1
    assert reply.usage.completion_tokens > 0
    assert store.run(run_id)["status"] == "finished"


async def test_a_client_that_goes_away_cancels_its_run(store):
    model = scripted_by_role([verdict(min(i, 9)) for i in range(1, 12)])
    slow = Slow(model._script, delay=0.3, name="local")
    app = create_app(config(), models={"local": slow}, store=store)
    with LiveServer(app) as base_url:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="refine", stream=True, messages=[{"role": "user", "content": "Explain the sky."}],
            extra_body={"refinegraph": {"params": {"max_iterations": 8}, "progress": True}})
        run_id = raw.headers["x-refinegraph-run-id"]
        stream = raw.parse()
        async for chunk in stream:
            if (chunk.model_extra or {}).get("refinegraph", {}).get("event", {}).get("type") == "llm_call":
                break
        await stream.close()
        await asyncio.sleep(1.5)
        calls = len(slow.calls)
        await asyncio.sleep(1.0)
        assert len(slow.calls) == calls < 17  # no more calls after the client left
    # Unsealed and listed as interrupted, so `refinegraph resume` finishes it without --force
    # while the server (the run's owner process) is still up.
    assert store.run(run_id)["status"] == "interrupted"
    [stopped] = store.events(run_id, types={"run_interrupted"})
    assert "cancel" in stopped["reason"].lower()
    assert store.claim_run(run_id, "elsewhere:1", "me:2", status="interrupted") is False  # owner must match
    row = store.run(run_id)
    assert store.claim_run(run_id, row["owner"], "resumer:1", status=row["status"])


async def test_a_fixed_database_cannot_be_swapped_by_a_request(store, tmp_path):
    db = tmp_path / "fixed.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x INT)")
    cfg = Config.model_validate({"pipelines": {"fixed": {"graph": "sql-greedy", "db": str(db)},
                                               "open": {"graph": "sql-greedy"}},
                                 "server": {"allow_request_db": False}})
    client = asgi_client(create_app(cfg, models={"local": twelve()}, store=store))
    for name, needle in (("fixed", "fixed by the server"), ("open", "allow_request_db")):
        with pytest.raises(openai.BadRequestError, match=needle):
            await client.chat.completions.create(model=name, messages=[{"role": "user", "content": "How many?"}],
                                                 extra_body={"refinegraph": {"db": str(tmp_path / "other.sqlite")}})
    assert run_count(store) == 0
