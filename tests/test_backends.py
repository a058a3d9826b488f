"""The openai backend against a mock transport: n splitting, json_schema, usage, retries."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from refinegraph import Budget, RunFailed, run
from refinegraph.config import Config, ModelSpec, RetryPolicy
from refinegraph.context import RunContext
from refinegraph.models import ModelError, OpenAIModel
from refinegraph.trace.store import TraceWriter
from refinegraph.trace.verify import verify_run


def completion(n: int, text: str = "ok", prompt: int = 11, cached: int = 3) -> dict:
    return {
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": i, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": f"{text} {i}"}} for i in range(n)],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 2 * n, "total_tokens": prompt + 2 * n,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    }


class FakeServer:
    """An httpx transport that answers from a list of (status, body) and records requests."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        status, reply = self.replies.pop(0) if self.replies else (200, None)
        if reply is None:
            reply = completion(body.get("n", 1))
        return httpx.Response(status, json=reply)


def model_on(server: FakeServer, **kwargs) -> OpenAIModel:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return OpenAIModel("remote", base_url="http://fake/v1", model="m", http_client=client, **kwargs)


def context(store, model, retries=3) -> RunContext:
    store.create_run("r", "test", "t")
    config = Config(models={"remote": ModelSpec(backend="openai", base_url="http://fake/v1", model="m",
                                                retry=RetryPolicy(max_retries=retries, initial_wait_s=0.001,
                                                                  max_wait_s=0.01))},
                    roles={"default": "remote"})
    return RunContext(run_id="r", models={"remote": model}, roles={"default": "remote"},
                      writer=TraceWriter(store, "r"), config=config)


async def test_n_is_one_request_when_allowed():
    server = FakeServer([])
    samples = await model_on(server).sample([{"role": "user", "content": "q"}], n=5, temperature=0.7)
    assert len(server.requests) == 1 and server.requests[0]["n"] == 5
    assert samples.requests == 1 and len(samples.texts) == 5
    assert samples.usage.prompt_tokens == 11 and samples.usage.cached_prompt_tokens == 3


async def test_n_is_split_when_the_server_caps_it(store):
    server = FakeServer([])
    ctx = context(store, model_on(server, max_n=3))
    samples = await ctx.sample("solver", [{"role": "user", "content": "q"}], n=7, temperature=0.7, seed=10)
    assert [r["n"] for r in server.requests] == [3, 3, 1]
    assert [r["seed"] for r in server.requests] == [10, 11, 12]
    assert len(samples.texts) == 7 and samples.requests == 3
    event = store.events("r", types={"llm_call"})[0]
    assert event["requests"] == 3 and event["params"]["n"] == 7 and len(event["cache_keys"]) == 7
    assert ctx.model_calls == 3


async def test_response_format_is_passed_through():
    server = FakeServer([])
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "object"}, "strict": True}}
    await model_on(server).sample([{"role": "user", "content": "q"}], response_format=fmt)
    assert server.requests[0]["response_format"] == fmt


async def test_429_and_5xx_are_retried_and_recorded(store):
    server = FakeServer([(500, {"error": "boom"}), (429, {"error": "slow down"}), (503, {"error": "x"})])
    ctx = context(store, model_on(server))
    samples = await ctx.sample("solver", [{"role": "user", "content": "q"}])
    assert samples.texts == ["ok 0"] and len(server.requests) == 4
    retries = store.events("r", types={"retry"})
    assert [r["error_class"] for r in retries] == ["InternalServerError", "RateLimitError", "InternalServerError"]
    assert store.events("r", types={"llm_call"})[0]["attempts"] == 4 and ctx.retries == 3


async def test_client_errors_are_not_retried(store):
    server = FakeServer([(400, {"error": "bad request"})])
    ctx = context(store, model_on(server))
    with pytest.raises(ModelError) as failed:
        await ctx.sample("solver", [{"role": "user", "content": "q"}])
    assert failed.value.attempts == 1 and len(server.requests) == 1
    assert store.events("r", types={"error"})[0]["error_class"] == "BadRequestError"


async def test_retries_are_bounded(store):
    server = FakeServer([(502, {"error": "down"})] * 10)
    ctx = context(store, model_on(server), retries=2)
    with pytest.raises(ModelError):
        await ctx.sample("solver", [{"role": "user", "content": "q"}])
    assert len(server.requests) == 3 and len(store.events("r", types={"retry"})) == 2


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_config(tmp_path) -> str:
    path = tmp_path / "dead.toml"
    path.write_text(f"""
[models.dead]
backend = "openai"
base_url = "http://127.0.0.1:{closed_port()}/v1"
model = "x"
timeout_s = 2
retry = {{ max_retries = 2, initial_wait_s = 0.01, max_wait_s = 0.05 }}

[roles]
default = "dead"
""")
    return str(path)


async def test_dead_server_fails_the_run_cleanly_and_records_it(store, tmp_path):
    from refinegraph.config import load_config
    with pytest.raises(RunFailed) as failed:
        await run("self-refine", "q", config=load_config(unreachable_config(tmp_path)), store=store,
                  checkpoint=False)
    result = failed.value.result
    assert result.stop_reason == "error" and "APIConnectionError" in result.error
    assert len(store.events(result.run_id, types={"retry"})) == 2
    errors = store.events(result.run_id, types={"error"})
    assert errors and "3 attempt(s)" in errors[0]["message"]
    assert verify_run(store, result.run_id).ok and store.run(result.run_id)["status"] == "error"


def test_cli_dead_server_exits_nonzero(tmp_path):
    from typer.testing import CliRunner

    from refinegraph.cli.app import app
    result = CliRunner().invoke(app, ["run", "self-refine", "q", "--config", unreachable_config(tmp_path)])
    assert result.exit_code == 1
    assert "APIConnectionError" in result.output and "run: " in result.output


async def test_cost_is_reported_when_prices_are_configured(store):
    server = FakeServer([])
    ctx = context(store, model_on(server))
    ctx.config.models["remote"].price_input_per_mtok = 1.0
    ctx.config.models["remote"].price_output_per_mtok = 2.0
    await ctx.sample("solver", [{"role": "user", "content": "q"}])
    assert store.events("r", types={"llm_call"})[0]["cost_usd"] == pytest.approx((11 * 1 + 2 * 2) / 1e6)


async def test_budget_caps_max_tokens_to_what_remains(store):
    server = FakeServer([])
    ctx = context(store, model_on(server))
    ctx.budget = Budget(max_tokens=100)
    await ctx.sample("solver", [{"role": "user", "content": "q"}], max_tokens=512)
    assert server.requests[0]["max_tokens"] < 100
    assert store.events("r", types={"llm_call"})[0]["max_tokens_capped"] is True


async def test_split_n_keeps_one_token_count_per_choice_and_replays(store):
    from refinegraph.cache import ReplayCache
    server = FakeServer([])
    ctx = context(store, model_on(server, max_n=3))
    samples = await ctx.sample("solver", [{"role": "user", "content": "q"}], n=7, temperature=0.7)
    assert len(samples.completion_tokens) == 7 and sum(samples.completion_tokens) == 14
    ctx.writer.flush()
    cache = ReplayCache.from_trace(store, "r")
    assert len(cache) == 7


async def test_missing_usage_is_a_recorded_fallback(store):
    reply = completion(1)
    del reply["usage"]
    ctx = context(store, model_on(FakeServer([(200, reply)])))
    await ctx.sample("solver", [{"role": "user", "content": "q"}])
    assert ctx.fallbacks == {"usage_missing": 1}
