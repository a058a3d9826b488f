"""The drop-in proxy: whole conversations, `GRAPH:UPSTREAM` names, a `[proxy]` upstream
server's models passed through; clients are the official openai SDK."""

from __future__ import annotations

import openai
import pytest
from scripted_upstream import ScriptedUpstream
from test_server import asgi_client

from refinegraph.config import Config
from refinegraph.models import ScriptedModel
from refinegraph.server import create_app

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "My favourite number is 17."},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "What is my favourite number?"},
]


def remembering(name: str = "local") -> ScriptedModel:
    return ScriptedModel(lambda m: "It is 17." if "favourite number is 17" in str(m) else "I do not know.", name=name)


async def test_a_served_run_sees_the_whole_conversation(store):
    model = remembering()
    client = asgi_client(create_app(Config(), models={"local": model}, store=store))
    reply = await client.chat.completions.create(model="greedy", messages=CHAT)
    assert "17" in reply.choices[0].message.content
    assert model.calls[0] == CHAT
    started = store.events(reply.model_extra["refinegraph"]["run_id"], types={"run_started"})[0]
    assert store.get_blob(started["conversation_blob"]) == CHAT


async def test_graph_colon_upstream_runs_the_graph_over_that_configured_model(store):
    cfg = Config.model_validate({"models": {"local": {}, "llama3:8b": {}}})
    local, llama = remembering("local"), ScriptedModel(lambda m: "llama says 12", name="llama3:8b")
    client = asgi_client(create_app(cfg, models={"local": local, "llama3:8b": llama}, store=store))
    reply = await client.chat.completions.create(model="greedy:llama3:8b", messages=CHAT)
    assert reply.choices[0].message.content == "llama says 12"
    assert reply.model_extra["refinegraph"]["answer"] == "12"
    assert reply.model == "greedy:llama3:8b"
    assert len(llama.calls) == 1 and local.calls == []


async def test_params_come_from_extra_body_under_the_proxy_budget(store):
    cfg = Config.model_validate({"proxy": {"budget": {"tokens": 1000}}})
    model = ScriptedModel(lambda m: "The answer is 12.", name="local")
    client = asgi_client(create_app(cfg, models={"local": model}, store=store))
    reply = await client.chat.completions.create(model="self-consistency:local", messages=CHAT,
                                                 extra_body={"refinegraph": {"params": {"n": 4}}})
    assert reply.model_extra["refinegraph"]["graph"] == "self-consistency"
    assert len(model.calls) == 1  # one request carrying n=4
    with pytest.raises(openai.BadRequestError, match="exceeds"):
        await client.chat.completions.create(model="greedy:local", messages=CHAT,
                                             extra_body={"refinegraph": {"budget": {"tokens": 5000}}})


@pytest.mark.parametrize("name, needle", [("nograph:local", "nograph"), ("greedy:gpt-9", "gpt-9"),
                                          ("greedy:", "names no upstream")])
async def test_unknown_graph_or_upstream_is_a_404_naming_it(store, name, needle):
    client = asgi_client(create_app(Config(), models={"local": remembering()}, store=store))
    with pytest.raises(openai.NotFoundError, match=needle):
        await client.chat.completions.create(model=name, messages=CHAT)
    assert store.runs() == []


async def test_acar_takes_a_comma_list_of_models(store):
    cfg = Config.model_validate({"models": {"cheap": {}, "strong": {}}, "roles": {"default": "cheap"}})
    cheap = ScriptedModel(lambda m: "The answer is 12.", name="cheap")
    strong = ScriptedModel(lambda m: "The answer is 12.", name="strong")
    client = asgi_client(create_app(cfg, models={"cheap": cheap, "strong": strong}, store=store))
    reply = await client.chat.completions.create(model="acar:cheap,strong", messages=CHAT)
    assert reply.model_extra["refinegraph"]["graph"] == "acar"
    assert cheap.calls and reply.choices[0].message.content


async def test_models_lists_pipelines_and_graph_forms(store):
    cfg = Config.model_validate({"models": {"local": {}}, "pipelines": {"plain": {"graph": "greedy"}}})
    client = asgi_client(create_app(cfg, models={"local": remembering()}, store=store))
    ids = [m.id for m in (await client.models.list()).data]
    assert "plain" in ids and "greedy:local" in ids and "self-refine:local" in ids


async def test_any_model_id_of_the_proxy_server_is_passed_through(store):
    with ScriptedUpstream(lambda body: {"content": f"upstream {body['model']} answers 12"}) as up:
        cfg = Config.model_validate({"proxy": {"base_url": up.url}})
        client = asgi_client(create_app(cfg, store=store))
        reply = await client.chat.completions.create(model="greedy:Qwen/Qwen2.5-7B-Instruct", messages=CHAT)
        assert reply.choices[0].message.content == "upstream Qwen/Qwen2.5-7B-Instruct answers 12"
        assert up.received[0]["model"] == "Qwen/Qwen2.5-7B-Instruct"
        assert up.received[0]["messages"] == CHAT


async def test_a_stream_is_the_answer_in_pieces_then_usage_and_no_progress_events(store):
    model = ScriptedModel(lambda m: "Your favourite number is 17, Ada.", name="local")
    client = asgi_client(create_app(Config(), models={"local": model}, store=store))
    stream = await client.chat.completions.create(model="self-refine:local", messages=CHAT, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_body={"refinegraph": {"params": {"max_iterations": 0}}})
    chunks = [chunk async for chunk in stream]
    assert not any("event" in (c.model_extra or {}).get("refinegraph", {}) for c in chunks)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["Your ", "favourite ", "number ", "is ", "17, ", "Ada."]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


async def test_a_stream_without_include_usage_has_no_usage_chunk(store):
    client = asgi_client(create_app(Config(), models={"local": remembering()}, store=store))
    stream = await client.chat.completions.create(model="greedy:local", messages=CHAT, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


async def test_a_vote_without_an_answer_says_so_and_keeps_the_chosen_text(store):
    model = ScriptedModel(lambda m: "I cannot tell.", name="local")
    client = asgi_client(create_app(Config(), models={"local": model}, store=store))
    reply = await client.chat.completions.create(model="self-consistency:local", messages=CHAT)
    assert reply.choices[0].message.content == "I cannot tell."
    meta = reply.model_extra["refinegraph"]
    assert meta["answer"] is None and meta["stop_reason"] == "no_answer"


async def test_a_run_with_nothing_to_say_is_a_422_not_an_empty_200(store):
    client = asgi_client(create_app(Config(), models={"local": remembering()}, store=store))
    refuse_first_call = {"refinegraph": {"budget": {"tokens": 5}}}
    with pytest.raises(openai.UnprocessableEntityError, match="found no answer") as caught:
        await client.chat.completions.create(model="greedy:local", messages=CHAT, extra_body=refuse_first_call)
    body = caught.value.body
    assert body["stop_reason"] == "budget" and store.run(body["run_id"])["status"] == "finished"
    stream = await client.chat.completions.create(model="greedy:local", messages=CHAT, stream=True,
                                                  extra_body=refuse_first_call)
    with pytest.raises(openai.APIError, match="found no answer"):
        async for _ in stream:
            pass


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_openai_max_tokens_caps_every_generation_of_the_run(store, field):
    """A drop-in client's max_tokens is honoured, as optillm does: no call of the run may
    generate more (the critic's and the refiner's too), and the trace says it was capped."""
    model = ScriptedModel(lambda m: "one two three four five six seven eight nine ten", name="local",
                          stops_at_max_tokens=True)
    client = asgi_client(create_app(Config(), models={"local": model}, store=store))
    reply = await client.chat.completions.create(model="self-refine:local", messages=CHAT, **{field: 4})
    calls = store.events(reply.model_extra["refinegraph"]["run_id"], types={"llm_call"})
    assert calls and all(c["params"]["max_tokens"] <= 4 and c["max_tokens_capped"] for c in calls)
    assert len(reply.choices[0].message.content.split()) <= 4


async def test_max_tokens_and_max_completion_tokens_that_differ_are_refused(store):
    client = asgi_client(create_app(Config(), models={"local": remembering()}, store=store))
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        await client.chat.completions.create(model="greedy:local", messages=CHAT, max_tokens=4,
                                             max_completion_tokens=8)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        await client.chat.completions.create(model="greedy:local", messages=CHAT, max_tokens=0)
    assert store.runs() == []


async def test_a_chat_reply_is_the_chosen_text_and_the_projected_answer_rides_beside_it(store):
    """Issue 13: with no answer type asked for, a chat client gets the winning sample's text
    as the model wrote it (it used to get the bare projection, "17"); the vote's answer is
    `refinegraph.answer`."""
    model = ScriptedModel(lambda m: "Your favourite number is 17, as you said.", name="local")
    client = asgi_client(create_app(Config(), models={"local": model}, store=store))
    for graph in ("greedy", "self-consistency"):
        reply = await client.chat.completions.create(model=f"{graph}:local", messages=CHAT)
        assert reply.choices[0].message.content == "Your favourite number is 17, as you said."
        assert reply.model_extra["refinegraph"]["answer"] == "17"
