"""Real clients over real sockets: the official openai SDK (sync, async, streaming) talks to
the server under uvicorn, which talks to a scripted OpenAI-compatible upstream (a test
double run in the test) through the `[proxy]` setting."""

from __future__ import annotations

import json
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
    assert reply.choices[0].message.content == "The code is 4711."
    assert upstream.received[0]["model"] == "some/model:7b" and upstream.received[0]["messages"] == CHAT


async def test_async_client_and_streaming_through_the_proxy(served):
    base_url, upstream = served
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    reply = await client.chat.completions.create(model="self-consistency:m", messages=CHAT,
                                                 extra_body={"refinegraph": {"params": {"n": 3}}})
    assert reply.choices[0].message.content == "The code is 4711."
    assert upstream.received[-1]["n"] == 3
    stream = await client.chat.completions.create(model="greedy:m", messages=CHAT, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The code is 4711."
    assert chunks[-1].usage.total_tokens > 0


# -- tool calls: the openai SDK, LangChain and LangGraph's ReAct agent ----------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Today's weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def calls_the_tool_then_answers(body: dict[str, Any]) -> dict[str, Any]:
    """A model that calls get_weather first and, once its result is in the chat, answers with it."""
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if results:
        return {"content": f"It is {results[-1]} in Paris."}
    return {"content": None, "tool_calls": [{"id": "call_w1", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]}


@pytest.fixture
def tool_server(store):
    with ScriptedUpstream(calls_the_tool_then_answers) as upstream:
        app = create_app(Config.model_validate({"proxy": {"base_url": upstream.url}}), store=store)
        with LiveServer(app) as base_url:
            yield base_url, upstream


def test_openai_sdk_tool_call_round_trip_sync_and_streaming(tool_server):
    base_url, upstream = tool_server
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="self-consistency:m", messages=ASK, tools=[WEATHER],
                                           extra_body={"refinegraph": {"params": {"n": 3}}})
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.tool_calls[0].function.name == "get_weather"
    assert upstream.received[0]["tools"] == [WEATHER]
    turn = [*ASK, message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "18 C"}]
    final = [c for c in client.chat.completions.create(model="greedy:m", messages=turn, tools=[WEATHER],
                                                       stream=True) if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in final) == "It is 18 C in Paris."
    assert final[-1].choices[0].finish_reason == "stop"
    streamed = [c for c in client.chat.completions.create(model="greedy:m", messages=ASK, tools=[WEATHER],
                                                          stream=True) if c.choices]
    deltas = [d for c in streamed for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.id, d.function.name, d.function.arguments) for d in deltas] == \
        [("call_w1", "get_weather", '{"city": "Paris"}')]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_langchain_chat_openai_bind_tools(tool_server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Today's weather in a city."""
        return "18 C"

    base_url, upstream = tool_server
    model = ChatOpenAI(base_url=base_url, api_key="x", model="greedy:m", max_retries=0).bind_tools([get_weather])
    message = model.invoke("What is the weather in Paris?")
    assert message.tool_calls == [{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_w1",
                                   "type": "tool_call"}]
    assert upstream.received[0]["tools"][0]["function"]["name"] == "get_weather"


def test_langgraph_react_agent_completes_a_task_that_needs_its_tool(tool_server):
    import warnings

    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    with warnings.catch_warnings():  # langgraph 1.x moved it to langchain.agents (not installed here)
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

    ran: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Today's weather in a city."""
        ran.append(city)
        return "18 C and sunny"

    base_url, upstream = tool_server
    model = ChatOpenAI(base_url=base_url, api_key="x", model="self-consistency:m", max_retries=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(model, [get_weather])
    state = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})
    assert ran == ["Paris"]
    assert state["messages"][-1].content == "It is 18 C and sunny in Paris."
    roles = [m["role"] for m in upstream.received[-1]["messages"]]
    assert roles[-3:] == ["user", "assistant", "tool"]
