"""Real clients over real sockets: the official openai SDK (sync, async, streaming) talks to
the server under uvicorn, which talks to a scripted OpenAI-compatible upstream (a test
double run in the test) through the `[proxy]` setting."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from scripted_upstream import ScriptedUpstream
from test_server import LiveServer

from refinegraph.config import Config
from refinegraph.server import create_app

CHAT = [
    {"role": "system", "content": "Answer with the number only."},
    {"role": "user", "content": "Remember: the code is 4711."},
    {"role": "assistant", "content": "Remembered."},
    {"role": "user", "content": "What is the code?"},
]


def remembers(body: dict[str, Any]) -> dict[str, Any]:
    """The upstream answers the code only when the earlier turn reached it."""
    seen = " ".join(str(m.get("content")) for m in body["messages"])
    return {"content": "The code is 4711." if "code is 4711" in seen else "Which code?"}


@pytest.fixture
def served(store):
    with ScriptedUpstream(remembers) as upstream:
        app = create_app(Config.model_validate({"proxy": {"base_url": upstream.url}}), store=store)
        with LiveServer(app) as base_url:
            yield base_url, upstream


def test_sync_client_multi_turn_through_the_proxy(served):
    base_url, upstream = served
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="greedy:some/model:7b", messages=CHAT)
    assert reply.choices[0].message.content == "4711"
    assert upstream.received[0]["model"] == "some/model:7b" and upstream.received[0]["messages"] == CHAT


async def test_async_client_and_streaming_through_the_proxy(served):
    base_url, upstream = served
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    reply = await client.chat.completions.create(model="self-consistency:m", messages=CHAT,
                                                 extra_body={"refinegraph": {"params": {"n": 3}}})
    assert reply.choices[0].message.content == "4711"
    assert upstream.received[-1]["n"] == 3
    stream = await client.chat.completions.create(model="greedy:m", messages=CHAT, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "4711"
    assert chunks[-1].usage.total_tokens > 0
