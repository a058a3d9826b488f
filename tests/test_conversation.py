"""A run's input as a whole conversation: the solver sees it as sent, judging roles quote it,
the trace keeps it as a blob, and resume and replay get it back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from refinegraph import run
from refinegraph.cli.app import app
from refinegraph.config import ConfigError
from refinegraph.models.scripted import ScriptedModel
from refinegraph.runner import replay
from refinegraph.trace.verify import verify_run

from conftest import verdict

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "My name is Ada and my favourite number is 17."},
    {"role": "assistant", "content": "Noted, Ada."},
    {"role": "user", "content": "What is my favourite number?"},
]


def remembering_model() -> ScriptedModel:
    """Answers 17 only when the earlier turn reached it; the critic is done only when the
    transcript it reads quotes that turn."""

    def respond(messages: list[dict[str, Any]]) -> str:
        text = "\n".join(str(m.get("content")) for m in messages)
        if "strict reviewer" in text:
            return verdict(9, done=True) if "favourite number is 17" in text else verdict(3)
        if "improve an answer" in text:
            return "refined: I do not know"
        return "Your favourite number is 17." if "favourite number is 17" in text else "I do not know."

    return ScriptedModel(respond, name="local")


async def test_the_answer_depends_on_an_earlier_turn(store):
    model = remembering_model()
    result = await run("self-refine", messages=CHAT, store=store, models={"local": model})
    assert result.answer == "Your favourite number is 17."
    assert result.stop_reason == "done"
    solver_call = model.calls[0]
    assert solver_call == CHAT  # as the client sent it: its own system message, no prompt added
    critic_call = model.calls[1]
    assert "[assistant]\nNoted, Ada." in critic_call[-1]["content"]


async def test_the_trace_keeps_the_conversation_as_a_blob(store):
    result = await run("self-refine", messages=CHAT, store=store, models={"local": remembering_model()})
    started = store.events(result.run_id, types={"run_started"})[0]
    assert started["input"] == {"task": "What is my favourite number?"}
    assert store.get_blob(started["conversation_blob"]) == CHAT
    assert verify_run(store, result.run_id).ok


async def test_a_replay_gets_the_conversation_back(store):
    result = await run("self-refine", messages=CHAT, store=store, models={"local": remembering_model()})
    again = await replay(result.run_id, store=store)
    assert again.decisions_match and again.answer_matches


async def test_sampling_graphs_see_the_conversation(store):
    model = ScriptedModel(lambda m: "The answer is 17." if "favourite number is 17" in str(m) else "The answer is 3.",
                          name="local")
    result = await run("self-consistency", messages=CHAT, store=store, models={"local": model},
                       params={"n": 3, "answer": "number"})
    assert result.answer == "17"


async def test_a_plain_string_is_the_one_user_message_case(store):
    model = ScriptedModel(lambda m: "ok", name="local")
    await run("self-refine", "Say ok.", store=store, models={"local": model}, params={"max_iterations": 0})
    assert model.calls[0][0]["role"] == "system" and model.calls[0][-1] == {"role": "user", "content": "Say ok."}


@pytest.mark.parametrize("messages, problem", [
    ([], "non-empty"),
    ([{"role": "wizard", "content": "hi"}], "role 'wizard'"),
    ([{"role": "system", "content": "be nice"}], "no user message"),
    ([{"role": "user", "content": 5}], "content must be"),
])
async def test_a_bad_conversation_is_refused_before_it_is_recorded(store, messages, problem):
    with pytest.raises(ConfigError, match=problem):
        await run("self-refine", messages=messages, store=store, models={"local": remembering_model()})
    assert store.runs() == []


def test_cli_messages_file(tmp_path, monkeypatch):
    import refinegraph.runner as runner

    seen: dict[str, Any] = {}
    real = runner.run

    async def spy(graph, task=None, **kwargs):
        seen.update(kwargs)
        return await real(graph, task, **{**kwargs, "models": {"local": remembering_model()}})

    monkeypatch.setattr("refinegraph.cli.running.run", spy)
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT))
    out = CliRunner().invoke(app, ["run", "self-refine", "--messages", str(path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["answer"] == "Your favourite number is 17."
    assert seen["messages"] == CHAT


@pytest.mark.parametrize("content, problem", [("[{", "Expecting"), ('{"role": "user"}', "non-empty JSON list"),
                                              ('[{"role": "user", "content": ""}]', "no user message")])
def test_cli_bad_messages_file_names_the_file_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "chat.json"
    path.write_text(content)
    out = CliRunner().invoke(app, ["run", "self-refine", "--messages", str(path)])
    assert out.exit_code == 2
    assert str(path) in out.output and problem in out.output


def test_cli_task_or_messages_not_both(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT))
    out = CliRunner().invoke(app, ["run", "self-refine", "hello", "--messages", str(path)])
    assert out.exit_code == 2 and "either TASK or --messages" in out.output
