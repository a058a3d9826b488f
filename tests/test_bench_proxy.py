"""bench proxy: both paths measured at each concurrency, every proxied request a traced
greedy run that reached the upstream once."""

from __future__ import annotations

from benchmarks.proxy import markdown, measure, percentile


def test_percentile_interpolates_between_samples():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert 4.9 < percentile([1.0, 2.0, 3.0, 4.0, 5.0], 99) <= 5.0


async def test_bench_proxy_measures_direct_and_proxied_at_each_concurrency():
    report = await measure(8, 2, [1, 3], upstream="stub")
    assert [r["concurrency"] for r in report["rows"]] == [1, 3]
    for row in report["rows"]:
        for kind in ("direct", "proxied"):
            assert row[kind]["p50_ms"] > 0 and row[kind]["requests_per_s"] > 0
        assert row["added_p50_ms"] == round(row["proxied"]["p50_ms"] - row["direct"]["p50_ms"], 3)
        # the same work upstream both ways (the chat brings its own system message)
        assert row["direct"]["mean_completion_tokens"] == row["proxied"]["mean_completion_tokens"]
        assert row["proxy_cpu_ms_per_request"] > 0  # refinegraph serve's own CPU time, per request
    assert report["requests_per_configuration"] == 8
    assert "| concurrency |" in markdown(report)


async def test_the_stub_upstream_takes_64_clients_connecting_at_once():
    """http.server's listen backlog of 5 reset 39-49 of 64 simultaneous connections
    (httpx.ReadError, which broke `bench proxy` at concurrency 16)."""
    import asyncio

    import httpx

    from benchmarks.stub_server import CountingServer

    with CountingServer(lambda body: "hi") as stub:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
            async def one() -> None:
                response = await client.post(f"{stub.url}/chat/completions", json={"model": "m", "messages": []})
                response.raise_for_status()

            for _ in range(3):
                outcomes = await asyncio.gather(*(one() for _ in range(64)), return_exceptions=True)
                assert [o for o in outcomes if isinstance(o, Exception)] == []


async def test_the_proxied_request_reaches_the_upstream_as_the_direct_one_does(store):
    """bench proxy compares like with like only if the upstream gets the same chat both
    ways: the solver once added its system prompt to the proxied one (a longer answer)."""
    from scripted_upstream import ScriptedUpstream
    from test_server import asgi_client

    from benchmarks.proxy import CHAT
    from refinegraph.config import Config
    from refinegraph.server import create_app

    with ScriptedUpstream(lambda body: {"content": "12"}) as upstream:
        client = asgi_client(create_app(Config.model_validate({"proxy": {"base_url": upstream.url}}), store=store))
        await client.chat.completions.create(model="greedy:upstream-model", messages=CHAT, max_tokens=16)
        assert upstream.received[-1]["messages"] == CHAT
        assert upstream.received[-1]["max_tokens"] == 16
