"""Faults between refinegraph and its models, injected on real sockets by the fault proxy.

Most tests put the proxy in front of a stub upstream (a test double that answers chat
completions and /tokenize at once, so each fault's handling is seen alone and fast); the
`local` ones run on the embedded model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from benchmarks.faultproxy import FAILING_KINDS, FAULT_KINDS, FaultProxy, spread
from refinegraph import RunFailed, run
from refinegraph.config import Config, ModelSpec, RetryPolicy
from refinegraph.context import RunContext
from refinegraph.models import ModelError, OpenAIModel
from refinegraph.trace import store as trace_store
from refinegraph.trace.store import TraceWriter
from refinegraph.trace.verify import verify_run

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
TIMEOUT_S = 0.5  # the client's; a stall outlasts it
RETRY_AFTER_S = 0.3

EXPECTED_CLASS = {
    "reset_before": "APIConnectionError", "reset_after": "APIConnectionError",
    "http_500": "InternalServerError", "http_502": "InternalServerError", "http_503": "InternalServerError",
    "http_429": "RateLimitError", "stall": "APITimeoutError", "truncated_body": "APIConnectionError",
    "truncated_json": "MalformedResponse", "malformed_json": "MalformedResponse", "wrong_shape": "MalformedResponse",
}


def expected_class(kind: str) -> str:
    return EXPECTED_CLASS[kind.removesuffix("_retry_after")]


# -- a stub upstream (test double) ---------------------------------------------------------


class StubUpstream:
    """Answers POST /v1/chat/completions with n choices "answer 5 (i)" and POST /tokenize
    with one token per word; records the paths it was asked for."""

    def __init__(self):
        self.paths: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> StubUpstream:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode().split("\r\n")
                path = lines[0].split(" ")[1]
                length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                              if k.lower() == "content-length")
                body = json.loads(await reader.readexactly(length))
                self.paths.append(path)
                if path == "/tokenize":
                    reply = {"tokens": list(range(len(body["content"].split())))}
                else:
                    n = body.get("n", 1)
                    reply = {"id": "c", "object": "chat.completion", "created": 0, "model": "stub",
                             "choices": [{"index": i, "finish_reason": "length",
                                          "message": {"role": "assistant", "content": f"answer 5 ({i})"}}
                                         for i in range(n)],
                             "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
                data = json.dumps(reply).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             + f"content-length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):  # the client went away, or the test ended
            return
        finally:
            writer.close()


@pytest.fixture
async def upstream():
    async with StubUpstream() as stub:
        yield stub


def remote(proxy: FaultProxy, **kwargs) -> OpenAIModel:
    return OpenAIModel("remote", base_url=f"{proxy.url}/v1", model="stub", timeout=TIMEOUT_S, **kwargs)


def config(max_retries: int = 3, **spec) -> Config:
    policy = RetryPolicy(max_retries=max_retries, initial_wait_s=0.001, max_wait_s=2.0)
    spec = {"base_url": "http://unused/v1", **spec}
    return Config(models={"remote": ModelSpec(backend="openai", model="stub", retry=policy, **spec)},
                  roles={"default": "remote"})


def context(store, model, max_retries: int = 3) -> RunContext:
    store.create_run("r", "test", "t")
    return RunContext(run_id="r", models={"remote": model}, roles={"default": "remote"},
                      writer=TraceWriter(store, "r"), config=config(max_retries))


# -- each fault alone ------------------------------------------------------------------


@pytest.mark.parametrize("kind", FAILING_KINDS)
async def test_each_fault_is_retried_once_and_recorded(store, upstream, kind):
    async with FaultProxy(upstream.url, script=[kind], retry_after_s=RETRY_AFTER_S, stall_s=5) as proxy:
        model = remote(proxy)
        ctx = context(store, model)
        samples = await ctx.sample("solver", MESSAGES)
        await model.aclose()
    assert samples.texts == ["answer 5 (0)"]
    stats = proxy.stats()
    assert stats.received == 2 and stats.faults == {kind: 1}
    (retry,) = store.events("r", types={"retry"})
    assert retry["error_class"] == expected_class(kind) and retry["attempt"] == 1
    assert retry["request"] == "completion"
    if kind.endswith("_retry_after"):
        assert retry["wait_s"] >= RETRY_AFTER_S  # the server's Retry-After is believed
    else:
        assert retry["wait_s"] < RETRY_AFTER_S
    if kind == "stall":  # the SDK's APITimeoutError says which timeout it was
        assert retry["message"].endswith("(cause: ReadTimeout)")
    (call,) = store.events("r", types={"llm_call"})
    assert call["attempts"] == 2 and ctx.retries == 1
    assert not store.events("r", types={"error"})
    forwarded = {"reset_after", "truncated_body", "truncated_json"}
    assert stats.forwarded == 1 + (kind in forwarded)  # a reset_after's upstream work is paid again


async def test_a_slow_answer_is_no_fault(store, upstream):
    async with FaultProxy(upstream.url, script=["slow"], slow_total_s=0.3, slow_chunk=16) as proxy:
        model = remote(proxy)
        ctx = context(store, model)
        started = time.perf_counter()
        samples = await ctx.sample("solver", MESSAGES)
        await model.aclose()
    assert time.perf_counter() - started >= 0.3
    assert samples.texts == ["answer 5 (0)"] and ctx.retries == 0
    assert store.events("r", types={"llm_call"})[0]["attempts"] == 1 and proxy.stats().received == 1


@pytest.mark.parametrize("kind", ["http_503", "reset_before", "malformed_json", "wrong_shape", "stall"])
async def test_exhausted_retries_are_one_typed_error(store, upstream, kind):
    async with FaultProxy(upstream.url, script=[kind] * 3, stall_s=5) as proxy:
        model = remote(proxy)
        ctx = context(store, model, max_retries=2)
        with pytest.raises(ModelError) as failed:
            await ctx.sample("solver", MESSAGES)
        await model.aclose()
    assert failed.value.error_class == expected_class(kind) and failed.value.attempts == 3
    assert proxy.stats().received == 3 and ctx.retries == 2
    assert [r["attempt"] for r in store.events("r", types={"retry"})] == [1, 2]
    (error,) = store.events("r", types={"error"})
    assert error["error_class"] == expected_class(kind) and error["attempts"] == 3 and error["cache_keys"]
    assert not store.events("r", types={"llm_call"})


async def test_a_run_whose_call_fails_for_good_ends_sealed_with_its_error(store, upstream):
    async with FaultProxy(upstream.url, rates={"http_502": 1.0}) as proxy:
        cfg = config(max_retries=2, base_url=f"{proxy.url}/v1", timeout_s=TIMEOUT_S)
        with pytest.raises(RunFailed) as failed:
            await run("greedy", "What is 2 + 3?", config=cfg, store=store, checkpoint=False)
    result = failed.value.result
    assert result.stop_reason == "error" and result.retries == 2 and "InternalServerError" in result.error
    report = verify_run(store, result.run_id)
    assert report.ok and report.sealed and store.run(result.run_id)["status"] == "error"
    assert proxy.stats().received == 3 == store.events(result.run_id, types={"error"})[0]["attempts"]


def test_retry_after_is_read_in_each_form_and_capped():
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    import httpx
    from tenacity import RetryCallState

    from refinegraph.models.retry import backoff, retry_after_s

    class Refused(Exception):
        def __init__(self, **headers):
            super().__init__("refused")
            self.response = httpx.Response(429, headers=headers)

    assert retry_after_s(Refused(**{"retry-after": "3"})) == 3.0
    assert retry_after_s(Refused(**{"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after_s(Refused(**{"retry-after": later})) <= 30
    assert retry_after_s(Refused(**{"retry-after": "soon"})) is None
    assert retry_after_s(Refused()) is None and retry_after_s(ValueError("x")) is None

    wait = backoff(RetryPolicy(max_retries=3, initial_wait_s=0.01, max_wait_s=2.0))
    state = RetryCallState(None, None, (), {})
    state.attempt_number = 1
    state.set_exception((Refused, Refused(**{"retry-after": "60"}), None))
    assert wait(state) == 2.0  # believed, up to the policy's cap
    state.set_exception((Refused, Refused(), None))
    assert wait(state) < 0.1


# -- /tokenize, the request after the completion ---------------------------------------


async def test_a_failed_token_count_does_not_send_the_completion_again(store, upstream):
    # completion ok; the first /tokenize fails once, then every count succeeds
    async with FaultProxy(upstream.url, script=["none", "http_503", "none", "none", "none"]) as proxy:
        model = remote(proxy, count_tokens="tokenize")
        ctx = context(store, model)
        samples = await ctx.sample("solver", MESSAGES, n=3, temperature=0.7)
        await model.aclose()
    stats = proxy.stats()
    assert stats.received_by_path == {"/v1/chat/completions": 1, "/tokenize": 4}
    assert samples.completion_tokens == [3, 3, 3]  # "answer 5 (i)": three words each
    (retry,) = store.events("r", types={"retry"})
    assert retry["request"] == "tokenize" and retry["error_class"] == "HTTPStatusError"
    assert store.events("r", types={"llm_call"})[0]["attempts"] == 1 and ctx.retries == 1


async def test_a_token_count_that_fails_for_good_is_an_estimate_recorded_as_such(store, upstream):
    async with FaultProxy(upstream.url, rates={"malformed_json": 1.0}, fault_paths=["/tokenize"]) as proxy:
        model = remote(proxy, count_tokens="tokenize")
        ctx = context(store, model, max_retries=1)
        samples = await ctx.sample("solver", MESSAGES, n=2, temperature=0.7)
        await model.aclose()
    assert proxy.stats().received_by_path == {"/v1/chat/completions": 1, "/tokenize": 4}
    assert samples.completion_tokens == [3, 3]  # 12 characters at 4 a token
    assert ctx.fallbacks == {"token_count_estimated": 2} and ctx.retries == 2
    assert {r["request"] for r in store.events("r", types={"retry"})} == {"tokenize"}
    call = store.events("r", types={"llm_call"})[0]
    assert call["attempts"] == 1 and call["choice_tokens"] == [3, 3]


# -- cancellation ----------------------------------------------------------------------


async def test_a_cancelled_run_loses_no_event(store, upstream):
    written: dict[str, int] = {}

    def count(writer, event):
        written[writer.run_id] = written.get(writer.run_id, 0) + 1

    trace_store.OBSERVERS.append(count)
    try:
        async with FaultProxy(upstream.url, rates={"stall": 1.0}, stall_s=30) as proxy:
            cfg = config(max_retries=0, base_url=f"{proxy.url}/v1", timeout_s=30)
            task = asyncio.create_task(run("self-refine", "What is 2 + 3?", config=cfg, store=store,
                                           checkpoint=False))
            while proxy.stats().received == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        trace_store.OBSERVERS.remove(count)
    (run_id,) = written
    assert len(store.raw_events(run_id)) == written[run_id]  # the held events were committed
    errors = store.events(run_id, types={"error"})
    assert [e["error_class"] for e in errors] == ["CancelledError"]  # the call
    assert errors[0]["attempts"] == 1 and not errors[0]["cache_keys"]
    assert len(store.events(run_id, types={"run_interrupted"})) == 1  # the run
    report = verify_run(store, run_id)
    assert report.ok and not report.sealed  # interrupted: resumable, not finished
    assert store.run(run_id)["status"] == "interrupted"


# -- the proxy itself ------------------------------------------------------------------


async def test_the_proxy_draws_faults_by_seed_and_counts_them(upstream):
    async def draw(seed: int) -> list[str]:
        proxy = FaultProxy(upstream.url, rates=spread(0.5), seed=seed)
        return [proxy._choose("/v1/chat/completions") for _ in range(200)]

    first = await draw(1)
    assert first == await draw(1) and first != await draw(2)
    assert 60 < sum(k != "none" for k in first) < 140
    assert set(first) - {"none"} <= set(FAULT_KINDS)
    with pytest.raises(ValueError):
        FaultProxy(upstream.url, rates={"http_500": 0.7, "stall": 0.5})
    with pytest.raises(ValueError):
        FaultProxy(upstream.url, rates={"gremlins": 0.1})


def test_the_proxy_runs_on_its_own_thread_and_passes_through():
    """Synchronous callers get the proxy on its own loop; its counters read from this thread."""
    loop = asyncio.new_event_loop()
    stub = StubUpstream()
    loop.run_until_complete(stub.__aenter__())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with FaultProxy(stub.url).in_thread() as proxy:
            reply = httpx.post(f"{proxy.url}/tokenize", json={"content": "one two three"})
            assert reply.json() == {"tokens": [0, 1, 2]}
            stats = proxy.stats()
            assert stats.received_by_path == {"/tokenize": 1} and stats.forwarded == 1 and not stats.faults
    finally:
        asyncio.run_coroutine_threadsafe(stub.__aexit__(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# -- the measured section, on the embedded model ---------------------------------------


@pytest.mark.local
async def test_a_short_faults_section_meets_every_expectation(tmp_path):
    from benchmarks.reliability_faults import faults_section

    section = await faults_section(runs=12, fault_rate=0.8, concurrency=4, timeout_s=5.0, max_retries=8,
                                   stall_s=10.0, retry_after_s=0.2, checkpoint=False, workdir=tmp_path)
    assert section.ok, section.problems
    assert section.runs == 12 and section.traces_verified == 12 and section.events_lost == 0
    figures = section.figures
    assert figures["calls_retried_share"] > 0.5 and figures["retry_events"] > 0
    assert sum(figures["outcomes"].values()) == 12
    assert section.faults_injected == sum(sum(v.values()) for v in figures["proxy"]["faults"].values())
    assert any(line.startswith("| stall") for line in section.lines)
