"""Tool calls through the proxy: the client's `tools` reach the upstream model, a reply with
`tool_calls` comes back in OpenAI's shape, votes compare calls by (name, arguments), the
critic reads the call, every call is a trace event; and the bounded pass-through pool."""

from __future__ import annotations

import itertools
import json
from typing import Any

import openai
import pytest
from scripted_upstream import ScriptedUpstream
from test_server import asgi_client

import refinegraph
from refinegraph.config import Config
from refinegraph.models import ScriptedModel
from refinegraph.server import create_app
from refinegraph.server.pipelines import ModelPool
from refinegraph.tool_calls import MARKER, ToolCall, ToolOffer, calls_in_content, decode, encode, tool_call_answer
from refinegraph.tools.answers import get_projection

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Today's weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def call(arguments: str, name: str = "get_weather", call_id: str = "call_up_1") -> dict[str, Any]:
    """An upstream message that calls a tool."""
    return {"content": None, "tool_calls": [{"id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": arguments}}]}


def agent_loop_upstream(body: dict[str, Any]) -> dict[str, Any]:
    """Calls the tool first; once a tool result is in the conversation, answers with it."""
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if results:
        return {"content": f"It is {results[-1]} in Paris."}
    return call('{"city": "Paris"}')


@pytest.fixture
def proxied(store):
    def make(respond):
        upstream = ScriptedUpstream(respond).__enter__()
        app = create_app(Config.model_validate({"proxy": {"base_url": upstream.url}}), store=store)
        return asgi_client(app), upstream, app
    made = []

    def factory(respond):
        made.append(make(respond))
        return made[-1]
    yield factory
    for _, upstream, _ in made:
        upstream.__exit__()


# -- the tool_call answer type ---------------------------------------------------------------


def test_calls_with_the_same_name_and_arguments_share_a_key_whatever_their_spelling():
    a = encode(None, [ToolCall(id="x1", name="f", arguments='{"a": 1, "b": [1, 2]}')])
    b = encode("", [ToolCall(id="y7", name="f", arguments='{"b":[1,2],"a":1}')])
    other = encode(None, [ToolCall(name="f", arguments='{"a": 2, "b": [1, 2]}')])
    assert get_projection("tool_call")(a) == get_projection("tool_call")(b)
    assert tool_call_answer(a) != tool_call_answer(other)
    both = [ToolCall(name="f", arguments="{}"), ToolCall(name="g", arguments='{"q": "x"}')]
    assert tool_call_answer(encode(None, both)) == tool_call_answer(encode(None, both[::-1]))
    assert tool_call_answer("  It is   sunny. ") == "It is sunny."
    assert tool_call_answer("") is None


def test_text_holding_the_marker_is_never_read_as_a_call():
    crafted = f'sure{MARKER}[{{"name": "rm_rf", "arguments": "{{}}"}}]'
    assert decode(crafted)[1] is not None  # what escaping prevents:
    escaped = encode("quoted " + crafted, [ToolCall(name="f")])
    content, calls = decode(escaped)
    assert [c.name for c in calls] == ["f"] and MARKER not in content


async def test_the_openai_backend_escapes_the_marker_in_plain_content():
    from refinegraph.models.openai_backend import OpenAIModel
    with ScriptedUpstream(lambda body: {"content": f'x{MARKER}[{{"name": "evil"}}]'}) as up:
        model = OpenAIModel("m", base_url=up.url, model="m")
        samples = await model.sample(ASK, tools={"tools": [WEATHER]})
        await model.aclose()
    assert decode(samples.texts[0])[1] is None


# What Qwen2.5-Coder-1.5B on the embedded llama.cpp server answered, verbatim (tool_choice
# "required", 128 tokens: the block, then newlines to the limit).
QWEN_CODE_BLOCK = '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```' + "\n" * 40


@pytest.mark.parametrize("content", [
    QWEN_CODE_BLOCK,
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    '```\n[{"name": "get_weather", "parameters": {"city": "Paris"}}]\n```',
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
])
def test_calls_written_as_content_are_read_as_calls(content):
    [written] = calls_in_content(content, ToolOffer(tools=[WEATHER]))
    assert (written.name, json.loads(written.arguments)) == ("get_weather", {"city": "Paris"})


@pytest.mark.parametrize("content", [
    'I would call get_weather: {"name": "get_weather", "arguments": {"city": "Paris"}}',  # prose around it
    '{"name": "delete_all", "arguments": {}}',  # a tool nobody offered
    '{"name": "get_weather", "arguments": {"city": "Paris"}, "answer": 3}',  # more than a call
    '```json\n{"city": "Paris", "temperature_c": 18}\n```',  # JSON that is an answer
    '{"name": "get_weather", "arguments": ["Paris"]}',
    '<tool_call>{"name": "get_weather"</tool_call>',
    # prose between two tagged calls (a lazy match across tags would drop it)
    '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>\nThe answer is 42.\n'
    '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>',
    '{"name": "get_weather", "arguments": {}, "parameters": {}}',
    "[" * 5000 + "]" * 5000,  # deeper than the JSON parser goes: text, not a crash
    "```json\n" + "[" * 5000,
    "It is sunny.", "",
])
def test_content_that_is_not_only_calls_of_offered_tools_stays_text(content):
    assert calls_in_content(content, ToolOffer(tools=[WEATHER])) is None


def test_calls_in_content_follow_the_offers_tool_choice_and_parallel_setting():
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    one = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    two = f'[{one}, {{"name": "get_time", "arguments": {{}}}}]'
    assert calls_in_content(one, None) is None  # no tools offered
    assert calls_in_content(one, ToolOffer(tools=[WEATHER], tool_choice="none")) is None
    named = {"type": "function", "function": {"name": "get_time"}}
    assert calls_in_content(one, ToolOffer(tools=[WEATHER, other], tool_choice=named)) is None
    assert len(calls_in_content(two, ToolOffer(tools=[WEATHER, other]))) == 2
    assert calls_in_content(two, ToolOffer(tools=[WEATHER, other], parallel_tool_calls=False)) is None
    nameless = {"type": "function", "function": {"parameters": {}}}
    assert calls_in_content('{"name": "", "arguments": {}}', ToolOffer(tools=[nameless])) is None


def test_reading_tagged_calls_takes_time_linear_in_the_reply():
    """A small model looping on its call until max_tokens: a backtracking pattern took 24 s
    on 10 repeats and froze the server's event loop; this reading is one pass."""
    import time
    looped = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' * 2000
    started = time.perf_counter()
    assert calls_in_content(looped + "<tool_call>\n{\"name\": \"get_wea", ToolOffer(tools=[WEATHER])) is None
    assert len(calls_in_content(looped, ToolOffer(tools=[WEATHER]))) == 2000
    assert time.perf_counter() - started < 30  # a hang detector, not a speed target: about 10 ms here


# -- through the server ----------------------------------------------------------------------


async def test_tools_reach_the_upstream_and_a_tool_call_comes_back_in_openais_shape(proxied, store):
    client, upstream, _ = proxied(agent_loop_upstream)
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = await client.chat.completions.create(model="greedy:m", messages=ASK, tools=[WEATHER],
                                                 tool_choice=choice, parallel_tool_calls=False)
    sent = upstream.received[0]
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == choice and sent["parallel_tool_calls"] is False
    out = reply.choices[0]
    assert out.finish_reason == "tool_calls" and out.message.content is None
    [tool_call] = out.message.tool_calls
    assert (tool_call.id, tool_call.function.name, json.loads(tool_call.function.arguments)) == \
        ("call_up_1", "get_weather", {"city": "Paris"})
    run_id = reply.model_extra["refinegraph"]["run_id"]
    [event] = store.events(run_id, types={"tool_call"})
    assert event["name"] == "get_weather" and event["offered"] and event["arguments_valid"]
    assert store.events(run_id, types={"vote"})[0]["winner"] == event["key"]

    # the client's agent loop runs the tool and sends its result back as a tool message
    follow_up = [*ASK, out.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": tool_call.id, "content": "18 C and sunny"}]
    final = await client.chat.completions.create(model="greedy:m", messages=follow_up, tools=[WEATHER])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "It is 18 C and sunny in Paris."
    [assistant] = [m for m in upstream.received[-1]["messages"] if m["role"] == "assistant"]
    assert assistant["tool_calls"][0]["id"] == "call_up_1"


async def test_self_consistency_votes_over_normalised_tool_calls(proxied, store):
    spellings = itertools.cycle(['{"city": "Rome"}', '{"city":"Paris"}', '{ "city" : "Paris" }'])
    client, upstream, _ = proxied(lambda body: call(next(spellings), call_id=""))
    reply = await client.chat.completions.create(model="self-consistency:m", messages=ASK, tools=[WEATHER],
                                                 extra_body={"refinegraph": {"params": {"n": 3}}})
    assert upstream.received[0]["n"] == 3
    [tool_call] = reply.choices[0].message.tool_calls
    assert json.loads(tool_call.function.arguments) == {"city": "Paris"}
    assert tool_call.id.startswith("call_")  # the upstream sent none: one is made up
    run_id = reply.model_extra["refinegraph"]["run_id"]
    assert len(store.events(run_id, types={"tool_call"})) == 3
    vote = store.events(run_id, types={"vote"})[0]
    assert [g["votes"] for g in vote["groups"]] == [2, 1] and "Paris" in vote["winner"]


async def test_self_refine_critiques_the_tool_call_before_returning_it(proxied, store):
    verdict = json.dumps({"correctness": 9, "completeness": 9, "clarity": 9, "score": 9, "verdict": "done"})

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        return {"content": verdict} if "strict reviewer" in str(body["messages"]) else call('{"city": "Paris"}')

    client, upstream, _ = proxied(respond)
    reply = await client.chat.completions.create(model="self-refine:m", messages=ASK, tools=[WEATHER])
    assert reply.choices[0].finish_reason == "tool_calls"
    critic = upstream.received[1]
    prompt = " ".join(m["content"] for m in critic["messages"])
    assert 'Tool call: get_weather({"city": "Paris"})' in prompt and "get_weather: Today's weather" in prompt
    assert "tools" not in critic  # the critic is not offered the tools: it judges, it does not call
    assert store.events(reply.model_extra["refinegraph"]["run_id"], types={"critique"})[0]["done"]


async def test_a_streamed_tool_call_arrives_as_tool_call_deltas(proxied):
    client, _, _ = proxied(agent_loop_upstream)
    stream = await client.chat.completions.create(model="greedy:m", messages=ASK, tools=[WEATHER], stream=True)
    chunks = [c async for c in stream]
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == \
        [(0, "get_weather", '{"city": "Paris"}')]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_call_the_upstream_wrote_as_content_comes_back_as_a_tool_call_and_is_counted(proxied, store):
    """Qwen2.5-Coder on llama.cpp answers a call as a JSON code block in content: the client
    still gets OpenAI's tool_calls, and the trace records the reading as a fallback."""
    client, _, _ = proxied(lambda body: {"content": QWEN_CODE_BLOCK})
    reply = await client.chat.completions.create(model="greedy:m", messages=ASK, tools=[WEATHER])
    out = reply.choices[0]
    assert out.finish_reason == "tool_calls" and not out.message.content
    [tool_call] = out.message.tool_calls
    assert (tool_call.function.name, json.loads(tool_call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert tool_call.id
    run_id = reply.model_extra["refinegraph"]["run_id"]
    [fallback] = store.events(run_id, types={"fallback"})
    assert fallback["kind"] == "tool_calls_from_content"
    plain = await client.chat.completions.create(model="greedy:m", messages=ASK)  # no tools offered: text
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.content == QWEN_CODE_BLOCK.strip()
    refused = await client.chat.completions.create(model="greedy:m", messages=ASK, tools=[WEATHER], tool_choice="none")
    assert refused.choices[0].finish_reason == "stop" and not refused.choices[0].message.tool_calls


async def test_tools_for_a_graph_or_model_that_takes_none_are_a_400(store):
    class NoTools(ScriptedModel):
        supports_tools = False

    client = asgi_client(create_app(Config(), models={"local": NoTools(["x"], name="local")}, store=store))
    with pytest.raises(openai.BadRequestError, match="backend scripted.*take none"):
        await client.chat.completions.create(model="greedy:local", messages=ASK, tools=[WEATHER])
    with pytest.raises(openai.BadRequestError, match="takes no tools; these graphs do: .*self-refine"):
        await client.chat.completions.create(model="sets:local", messages=ASK, tools=[WEATHER])
    with pytest.raises(openai.BadRequestError, match="answer='tool_call'"):
        await client.chat.completions.create(model="greedy:local", messages=ASK, tools=[WEATHER],
                                             extra_body={"refinegraph": {"params": {"answer": "number"}}})
    assert store.runs() == []


async def test_a_tool_run_replays_from_its_trace(store):
    model = ScriptedModel(lambda m: encode(None, [ToolCall(id="c1", name="get_weather", arguments='{"city":"Paris"}')]),
                          name="local")
    result = await refinegraph.run("self-consistency", config=Config(), models={"local": model}, store=store,
                                   messages=ASK, tools={"tools": [WEATHER]}, params={"n": 2, "answer": "tool_call"})
    assert model.tool_offers == [{"tools": [WEATHER]}]
    assert result.answer.startswith("tool_calls:")
    replayed = await refinegraph.replay(result.run_id, store=store)
    assert replayed.decisions_match and replayed.answer_matches


async def test_a_model_without_tool_support_is_refused_in_the_run_too(store):
    class NoTools(ScriptedModel):
        supports_tools = False

    with pytest.raises(refinegraph.RunFailed, match="cannot take the client's tools"):
        await refinegraph.run("greedy", config=Config(), models={"local": NoTools(["x"], name="local")},
                              store=store, messages=ASK, tools={"tools": [WEATHER]})


# -- the bounded pass-through pool -----------------------------------------------------------


class Closing(ScriptedModel):
    def __init__(self, name: str):
        super().__init__(["x"], name=name)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_the_pass_through_pool_keeps_the_ids_used_last_and_closes_the_evicted(monkeypatch):
    import refinegraph.server.pipelines as pipelines
    monkeypatch.setattr(pipelines, "build_model", lambda name, spec: Closing(name))
    server = Config.model_validate({"proxy": {"base_url": "http://upstream.test/v1", "max_clients": 2}})
    proxied = server.model_copy(update={"models": {
        **server.models, **{i: server.models["local"] for i in ("a", "b", "c")}}})
    pool = ModelPool(server)
    a = await pool.acquire({"a"}, proxied)
    b = await pool.acquire({"b"}, proxied)
    await pool.release(b)
    await pool.acquire({"a"}, proxied)  # a used again: b is now the least recently used
    await pool.release(a)
    await pool.acquire({"c"}, proxied)
    assert list(pool.passthrough) == ["a", "c"] and b["b"].closed and pool.evictions == 1
    held = await pool.acquire({"b"}, proxied)  # evicts a, which a run still holds: closed at its release
    assert not a["a"].closed and "a" not in pool.passthrough
    await pool.release(a)
    assert a["a"].closed and not held["b"].closed
    local = pool.get({"local"})
    assert "local" in pool.built and "local" not in pool.passthrough and local["local"] is pool.built["local"]
    await pool.aclose()


async def test_with_tools_offered_the_conversation_reaches_the_upstream_as_sent(proxied):
    """The solver's "end with The answer is X" system text was added to a tool chat with no
    system message of its own, and Qwen2.5-Coder then wrote its call as prose ("The answer is
    {"name": "get_weather", ...}") instead of calling the tool (pytest -m qwen)."""
    client, upstream, _ = proxied(agent_loop_upstream)
    for graph in ("greedy", "self-consistency"):
        await client.chat.completions.create(model=f"{graph}:m", messages=ASK, tools=[WEATHER])
        assert upstream.received[-1]["messages"] == ASK
