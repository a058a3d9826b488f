"""Embedding: graphs as LangGraph subgraphs and LangChain Runnables, and the `langchain` backend.

Control flow runs on test doubles (ScriptedModel, langchain-core's fake chat models, a mock
HTTP transport under ChatOpenAI); the `local` tests run the real embedded model.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any, TypedDict

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langgraph.graph import END, START, StateGraph

from refinegraph import Budget, ConfigError, RunFailed, run
from refinegraph.config import Config, ModelSpec, load_config
from refinegraph.embed import as_runnable, as_subgraph, task_from_messages
from refinegraph.models import LangChainModel, ScriptedModel, build_model
from refinegraph.runner import replay
from refinegraph.trace.verify import verify_run

from conftest import role_of, scripted_by_role, verdict

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Tom has 3 boxes of 4 pens. How many pens does he have?"


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def cycling(*texts: str) -> ScriptedModel:
    replies = itertools.cycle(texts)
    return ScriptedModel(lambda messages: next(replies), name="local")


def started_input(store, run_id: str) -> dict[str, Any]:
    return store.events(run_id, types={"run_started"})[0]["input"]


# -- as_subgraph ----------------------------------------------------------------------------------


async def test_example_routes_numbers_to_self_consistency(store):
    example = load_example("subgraph")
    model = cycling("The answer is 12.", "The answer is 12.", "The answer is 7.")
    state = await example.build_app(models={"local": model}).ainvoke({"question": QUESTION})
    assert state["kind"] == "math" and state["answer"] == "12" and state["stop_reason"] == "done"
    assert state["reply"].startswith("[math] 12")
    run_id = state["run_id"]
    assert verify_run(store, run_id).ok
    assert store.run(run_id)["graph"] == "self-consistency"
    assert started_input(store, run_id) == {"task": QUESTION}
    (vote,) = store.events(run_id, types={"vote"})
    assert [(g["key"], g["members"]) for g in vote["groups"]] == [("12", [0, 1]), ("7", [2])]
    calls = len(model.calls)
    replayed = await replay(run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match and len(model.calls) == calls


async def test_example_routes_prose_to_self_refine(store):
    example = load_example("subgraph")
    model = scripted_by_role([verdict(4), verdict(8, done=True)])
    state = await example.build_app(models={"local": model}).ainvoke({"question": "Why is the sky blue?"})
    assert state["kind"] == "prose" and state["answer"] == "refiner answer 1"
    assert model.counters == {"solver": 1, "critic": 2, "refiner": 1}
    run_id = state["run_id"]
    assert verify_run(store, run_id).ok and store.run(run_id)["graph"] == "self-refine"
    assert [r["iteration"] for r in store.events(run_id, types={"refine"})] == [1]


class Parent(TypedDict, total=False):
    q: str
    out: str | None
    rid: str
    why: str


def parent_with(sub: Any) -> Any:
    builder = StateGraph(Parent)
    builder.add_node("refine", sub)
    builder.add_edge(START, "refine")
    builder.add_edge("refine", END)
    return builder.compile()


async def test_each_invocation_is_its_own_run_with_a_fresh_budget(store):
    model = cycling("The answer is 5.")
    sub = as_subgraph("greedy", input_key="q", output_key="out", run_id_key="rid", stop_reason_key="why",
                      models={"local": model}, budget=Budget(max_calls=1))
    app = parent_with(sub)
    first = await app.ainvoke({"q": "2+3?"})
    second = app.invoke({"q": "1+4?"})  # the sync path too
    assert first["out"] == second["out"] == "5" and first["why"] == second["why"] == "done"
    assert first["rid"] != second["rid"]
    for state, question in ((first, "2+3?"), (second, "1+4?")):
        assert verify_run(store, state["rid"]).ok
        assert started_input(store, state["rid"]) == {"task": question}
        assert store.events(state["rid"], types={"run_started"})[0]["budget"]["calls"] == 1


async def test_budget_stop_is_written_back_not_raised(store):
    sub = as_subgraph("self-consistency", params={"n": 4}, input_key="q", output_key="out", run_id_key="rid",
                      stop_reason_key="why", models={"local": cycling("The answer is 5.")},
                      budget=Budget(max_calls=0))
    state = await parent_with(sub).ainvoke({"q": "2+3?"})
    assert state["why"] == "budget" and state["out"] is None
    assert store.events(state["rid"], types={"budget"})


async def test_wiring_errors_are_caught_before_any_run():
    with pytest.raises(KeyError, match="unknown graph"):
        as_subgraph("no-such-graph")
    with pytest.raises(ConfigError, match="bad parameters"):
        as_subgraph("self-consistency", params={"n": 0})
    with pytest.raises(ConfigError, match="reads 'task'"):
        as_subgraph("greedy", input_key={"q": "question"})
    with pytest.raises(ConfigError, match="both read and written"):
        as_subgraph("greedy", input_key="answer")


async def test_missing_parent_key_is_a_clear_error(store):
    sub = as_subgraph("greedy", input_key="q", output_key="out", models={"local": cycling("x")})
    with pytest.raises(ConfigError, match="no value for \\['q'\\]"):
        await parent_with(sub).ainvoke({"out": "nothing asked"})
    assert store.runs() == []


async def test_a_failed_inner_run_raises_with_its_sealed_trace(store):
    def broken(messages):
        raise RuntimeError("boom")

    sub = as_subgraph("greedy", input_key="q", output_key="out", models={"local": ScriptedModel(broken, name="local")})
    with pytest.raises(RunFailed) as failed:
        await parent_with(sub).ainvoke({"q": "2+3?"})
    assert failed.value.result.stop_reason == "error"
    assert verify_run(store, failed.value.result.run_id).ok


# -- as_runnable ----------------------------------------------------------------------------------


async def test_runnable_inputs_and_message(store):
    model = cycling("The answer is 12.")
    runnable = as_runnable("self-consistency", params={"n": 2}, models={"local": model})
    message = await runnable.ainvoke(QUESTION)
    assert isinstance(message, AIMessage) and message.content == "12"
    meta = message.response_metadata
    assert meta["stop_reason"] == "done" and meta["graph"] == "self-consistency" and meta["model_calls"] == 1
    assert verify_run(store, meta["run_id"]).ok
    assert message.usage_metadata["total_tokens"] == meta["usage"]["total_tokens"] > 0
    assert message.usage_metadata["input_tokens"] == meta["usage"]["prompt_tokens"]

    by_dict = runnable.invoke({"task": "What is 6+6?"})
    assert started_input(store, by_dict.response_metadata["run_id"]) == {"task": "What is 6+6?"}
    chat = await runnable.ainvoke([SystemMessage("Be brief."), HumanMessage("What is 6+6?")])
    assert started_input(store, chat.response_metadata["run_id"]) == {"task": "Be brief.\n\nWhat is 6+6?"}
    batch = await runnable.abatch(["a?", "b?", "c?"])
    assert [m.content for m in batch] == ["12"] * 3
    assert len({m.response_metadata["run_id"] for m in batch}) == 3
    with pytest.raises(ConfigError, match="reads 'task'"):
        await runnable.ainvoke({"question": "x"})


async def test_runnable_composes_with_a_prompt(store):
    prompt = ChatPromptTemplate.from_messages([("system", "Solve it."), ("human", "{q}")])
    chain = prompt | as_runnable("greedy", models={"local": cycling("The answer is 9.")})
    message = await chain.ainvoke({"q": "4+5?"})
    assert message.content == "9"
    assert started_input(store, message.response_metadata["run_id"]) == {"task": "Solve it.\n\n4+5?"}
    assert chain.batch([{"q": "1+8?"}, {"q": "2+7?"}])[1].content == "9"


def test_conversations_become_transcripts():
    task = task_from_messages([SystemMessage("Be exact."), HumanMessage("2+2?"), AIMessage("4"),
                               HumanMessage("and times 3?")])
    assert task == "System: Be exact.\nUser: 2+2?\nAssistant: 4\nUser: and times 3?"
    with pytest.raises(ConfigError):
        task_from_messages([])


async def test_runnable_budget_stop_gives_empty_content(store):
    runnable = as_runnable("greedy", models={"local": cycling("The answer is 9.")}, budget=Budget(max_calls=0))
    message = await runnable.ainvoke("4+5?")
    assert message.content == "" and message.response_metadata["stop_reason"] == "budget"


# -- the langchain backend ------------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}


class RoleFake(GenericFakeChatModel):
    """Test double: a langchain-core fake chat model that answers per role (like scripted_by_role)
    and reports usage_metadata on every reply."""

    critic_replies: list[str] = []
    counts: dict[str, int] = {}

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        from langchain_core.outputs import ChatGeneration, ChatResult

        dicts = [{"role": {"system": "system", "human": "user"}.get(m.type, m.type), "content": m.content}
                 for m in messages]
        role = role_of(dicts)
        self.counts[role] = self.counts.get(role, 0) + 1
        text = self.critic_replies[self.counts[role] - 1] if role == "critic" else f"{role} answer {self.counts[role]}"
        message = AIMessage(content=text, usage_metadata=usage(10 * self.counts[role], len(text.split())),
                            response_metadata={"finish_reason": "stop", "model_name": "role-fake"})
        return ChatResult(generations=[ChatGeneration(message=message)])


async def test_self_refine_through_a_langchain_chat_model(store):
    fake = RoleFake(messages=iter([]), critic_replies=[verdict(4), verdict(9, done=True)], counts={})
    model = LangChainModel("local", fake)
    assert model.supports_json_schema is False and model.accepts == set()
    result = await run("self-refine", "Explain why the sky is blue.", models={"local": model}, store=store)
    assert result.answer == "refiner answer 1" and result.stop_reason == "done"
    assert fake.counts == {"solver": 1, "critic": 2, "refiner": 1}
    calls = store.events(result.run_id, types={"llm_call"})
    assert [c["backend"] for c in calls] == ["langchain"] * 4
    assert [c["params"]["response_format"] for c in calls] == [None] * 4  # no json_schema: tolerant parsing
    critiques = store.events(result.run_id, types={"critique"})
    assert [c["parsed_with"] for c in critiques] == ["tolerant", "tolerant"]
    assert result.usage["prompt_tokens"] == 10 + 10 + 20 + 10  # solver 1, critic 1, refiner 1, critic 2
    assert result.usage["completion_tokens"] == sum(c["completion_tokens"] for c in calls) > 0
    assert result.fallbacks == {}
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match
    assert fake.counts == {"solver": 1, "critic": 2, "refiner": 1}


async def test_self_consistency_through_a_langchain_chat_model_one_call_per_sample(store):
    replies = [AIMessage(content=t, usage_metadata=usage(7, 4), response_metadata={"finish_reason": "stop"})
               for t in ("The answer is 12.", "The answer is 12.", "The answer is 3.")]
    fake = GenericFakeChatModel(messages=iter(replies))
    result = await run("self-consistency", QUESTION, params={"n": 3}, models={"local": LangChainModel("local", fake)},
                       store=store)
    assert result.answer == "12" and result.model_calls == 3
    (call,) = store.events(result.run_id, types={"llm_call"})
    assert call["requests"] == 3 and call["choice_tokens"] == [4, 4, 4] and call["finish_reasons"] == ["stop"] * 3
    assert result.usage == {"prompt_tokens": 21, "cached_prompt_tokens": 0, "completion_tokens": 12,
                            "total_tokens": 33}
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match and replayed.answer == "12"


async def test_a_model_without_usage_is_a_recorded_fallback(store):
    fake = FakeListChatModel(responses=["The answer is 12."])
    result = await run("greedy", QUESTION, models={"local": LangChainModel("local", fake)}, store=store)
    assert result.answer == "12" and result.fallbacks == {"usage_missing": 1}
    assert result.usage["total_tokens"] == 0


async def test_config_builds_the_langchain_backend(store, rg_home):
    rg_home.mkdir(parents=True, exist_ok=True)
    (rg_home / "config.toml").write_text(
        '[models.lc]\nbackend = "langchain"\n'
        'langchain_class = "langchain_core.language_models.fake_chat_models:FakeListChatModel"\n'
        'langchain_kwargs = {responses = ["The answer is 12."]}\n'
        '[roles]\ndefault = "lc"\n')
    config = load_config()
    model = build_model("lc", config.spec("lc"))
    assert isinstance(model, LangChainModel) and model.supports_json_schema is False
    result = await run("greedy", QUESTION, config=config, store=store)
    assert result.answer == "12"
    started = store.events(result.run_id, types={"run_started"})[0]
    assert started["models"]["lc"]["backend"] == "langchain"


@pytest.mark.parametrize(("path", "message"), [
    ("no_such_package_xyz:Chat", "cannot import 'no_such_package_xyz'.*pip install no-such-package-xyz"),
    ("langchain_core.language_models.fake_chat_models:Nope", "has no 'Nope'"),
    ("pathlib.Path", "not a langchain-core chat model"),
    ("langchain_core.language_models.fake_chat_models.FakeListChatModel",
     "FakeListChatModel\\(\\*\\*langchain_kwargs\\) failed"),
    ("JustAName", "expected 'package.module:ClassName'"),
])
def test_bad_langchain_classes_are_config_errors(path, message):
    spec = ModelSpec(backend="langchain", langchain_class=path)
    with pytest.raises(ConfigError, match=message):
        build_model("lc", spec)


def test_langchain_backend_needs_a_class():
    with pytest.raises(ConfigError, match="needs langchain_class"):
        build_model("lc", ModelSpec(backend="langchain"))


class FakeOpenAI:
    """An httpx transport standing in for an OpenAI server under ChatOpenAI (records requests)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        n = body.get("n", 1)
        return httpx.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 0, "model": "served-model",
            "choices": [{"index": i, "finish_reason": "length" if i else "stop",
                         "message": {"role": "assistant", "content": '{"answer": 12}'}} for i in range(n)],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5 * n, "total_tokens": 20 + 5 * n,
                      "prompt_tokens_details": {"cached_tokens": 8}}})


def chat_openai_on(server: FakeOpenAI) -> Any:
    from langchain_openai import ChatOpenAI

    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return ChatOpenAI(base_url="http://fake/v1", model="m", api_key="x", http_async_client=client, max_retries=0)


SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": {
    "type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
    "additionalProperties": False}}}


async def test_chat_openai_gets_sampling_params_one_request_per_sample():
    server = FakeOpenAI()
    model = LangChainModel("lc", chat_openai_on(server))
    assert model.supports_json_schema is True and {"temperature", "max_tokens", "seed"} <= model.accepts
    samples = await model.sample([{"role": "user", "content": "hi"}], n=3, temperature=0.7, max_tokens=33, seed=5,
                                 stop=["\n\n"], response_format=SCHEMA)
    assert len(server.requests) == 3 and samples.requests == 3
    assert sorted(r["seed"] for r in server.requests) == [5, 6, 7]
    first = server.requests[0]
    assert first["temperature"] == 0.7 and first["max_completion_tokens"] == 33 and first["stop"] == ["\n\n"]
    assert first["response_format"] == SCHEMA and "n" not in first
    assert samples.texts == ['{"answer": 12}'] * 3 and samples.finish_reasons == ["stop"] * 3
    assert samples.usage.prompt_tokens == 60 and samples.usage.cached_prompt_tokens == 24
    assert samples.completion_tokens == [5, 5, 5] and samples.model_id == "served-model"


async def test_chat_openai_native_n_is_one_request_counted_once():
    server = FakeOpenAI()
    model = LangChainModel("lc", chat_openai_on(server), native_n=True)
    samples = await model.sample([{"role": "user", "content": "hi"}], n=3, temperature=0.7, max_tokens=33, seed=5)
    assert len(server.requests) == 1 and server.requests[0]["n"] == 3 and server.requests[0]["seed"] == 5
    assert samples.requests == 1 and samples.finish_reasons == ["stop", "length", "length"]
    assert samples.usage.prompt_tokens == 20 and samples.usage.completion_tokens == 15
    assert samples.completion_tokens == [5, 5, 5] and len(samples.server_usage) == 1


def test_native_n_needs_an_n_field():
    assert LangChainModel("x", FakeListChatModel(responses=["a"]), native_n=True).native_n is False
    with pytest.raises(TypeError, match="BaseChatModel"):
        LangChainModel("x", object())  # type: ignore[arg-type]


def test_config_takes_the_api_key_from_the_environment(monkeypatch):
    spec = ModelSpec(backend="langchain", langchain_class="langchain_openai:ChatOpenAI", api_key_env="LC_TEST_KEY",
                     langchain_kwargs={"base_url": "http://fake/v1", "model": "m"}, langchain_native_n=True)
    with pytest.raises(ConfigError, match="LC_TEST_KEY is not set"):
        build_model("lc", spec)
    monkeypatch.setenv("LC_TEST_KEY", "sk-test")
    model = build_model("lc", spec)
    assert model.chat_model.openai_api_key.get_secret_value() == "sk-test" and model.native_n
    assert model.chat_model.max_retries == 0
    forced = build_model("lc", spec.model_copy(update={"supports_json_schema": False}))
    assert forced.supports_json_schema is False


# -- the real embedded model (after the benchmark: keep them short) --------------------------------


@pytest.mark.local
async def test_example_subgraph_on_the_embedded_model(store):
    example = load_example("subgraph")
    state = await example.main("What is 12 + 7?")
    assert state["kind"] == "math" and state["reply"].startswith("[math]")
    assert state["stop_reason"] in {"done", "budget"}
    assert verify_run(store, state["run_id"]).ok
    (vote,) = store.events(state["run_id"], types={"vote"})
    assert sum(g["votes"] for g in vote["groups"]) + len(vote["failed"]) == 3


@pytest.mark.local
async def test_chat_openai_on_the_embedded_server(store):
    from langchain_core.callbacks import UsageMetadataCallbackHandler
    from langchain_openai import ChatOpenAI

    from refinegraph.models.local import ensure_server

    address, _ = ensure_server()
    counter = UsageMetadataCallbackHandler()
    chat = ChatOpenAI(base_url=f"{address}/v1", model="smollm2-135m-instruct", api_key="x", callbacks=[counter])
    result = await run("self-consistency", "What is 12 + 7?", params={"n": 3, "max_tokens": 64},
                       models={"local": LangChainModel("local", chat)}, store=store)
    assert verify_run(store, result.run_id).ok and result.model_calls == 3
    (call,) = store.events(result.run_id, types={"llm_call"})
    assert call["backend"] == "langchain" and len(call["choice_tokens"]) == 3
    (seen,) = counter.usage_metadata.values()
    assert result.usage["prompt_tokens"] == seen["input_tokens"] > 0
    assert result.usage["completion_tokens"] == seen["output_tokens"] == sum(call["choice_tokens"]) > 0
    assert result.fallbacks == {}
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match


def test_config_without_langchain_is_unchanged():
    assert Config().models["local"].backend == "local"


async def test_the_inner_run_is_not_part_of_the_parents_langchain_run(store):
    """The parent's callbacks see the subgraph as one node, not the inner graph's nodes."""
    from langchain_core.callbacks import AsyncCallbackHandler

    class Names(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.names: list[str] = []

        async def on_chain_start(self, serialized, inputs, *, name=None, **kwargs) -> None:
            self.names.append(name or "")

    sub = as_subgraph("greedy", input_key="q", output_key="out", models={"local": cycling("The answer is 5.")})
    seen = Names()
    state = await parent_with(sub).ainvoke({"q": "2+3?"}, {"callbacks": [seen]})
    assert state["out"] == "5"
    assert "refinegraph:greedy" in seen.names
    inner_nodes = {e["node"] for e in store.events(store.runs()[0]["run_id"], types={"node_started"})}
    assert inner_nodes and not inner_nodes & set(seen.names)
