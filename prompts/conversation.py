"""A client's conversation as model input: the solver's messages and a quoted transcript.

A run's input may be a whole chat (system, developer, user, assistant and tool turns)
rather than one task string. The solver and sampler then see the conversation as the
client sent it; roles that judge an answer (critic, verifier, refiner, judge) get it
quoted as a transcript in place of the task, so they judge the reply to that chat. With
no conversation, both fall back to the one-task prompt (the one-user-message case).
"""

from __future__ import annotations

from typing import Any

from refinegraph.conversation import Conversation, check_conversation, content_text, last_user_text
from refinegraph.prompts import Prompt
from refinegraph.tool_calls import ToolOffer, describe_tools, readable

__all__ = ["Conversation", "check_conversation", "content_text", "last_user_text", "solver_messages", "task_text",
           "transcript"]


def _turn(message: dict[str, Any]) -> str:
    role = str(message.get("role", "user"))
    text = content_text(message.get("content"))
    if role == "tool":
        role = f"tool result ({message.get('tool_call_id', '?')})"
    calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    called = "".join(f"\n[calls {c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})]"
                     for c in calls if isinstance(c, dict))
    return f"[{role}]\n{text}{called}".rstrip()


def transcript(conversation: Conversation) -> str:
    """The conversation quoted for a judging role; its last user turn is what to answer."""
    turns = "\n\n".join(_turn(m) for m in conversation)
    return f"Conversation so far (reply to its last user turn):\n\n{turns}"


def task_text(task: str, conversation: Conversation | None, tools: ToolOffer | None = None) -> str:
    """What a judging role's `$task` is: the transcript when there is a conversation, with
    the tools the client offered (so a tool call can be judged against them)."""
    text = transcript(conversation) if conversation else task
    return f"{text}\n\n{describe_tools(tools)}" if tools is not None else text


def answer_text(text: str) -> str:
    """What a judging role's `$answer` is: the reply, its tool calls spelled out."""
    return readable(text)


def solver_messages(prompt: Prompt, task: str, conversation: Conversation | None, *,
                    tools_offered: bool = False) -> list[dict[str, Any]]:
    """The solver's messages: the conversation as sent (the prompt's system text is
    added only when the client sent no system or developer message, and never beside
    offered tools: its "end with The answer is X" made Qwen2.5 write a call as text),
    else the prompt."""
    if not conversation:
        return prompt.render(task=task)
    messages = [dict(m) for m in conversation]
    if tools_offered:
        return messages
    if prompt.system and not any(m.get("role") in ("system", "developer") for m in messages):
        messages.insert(0, {"role": "system", "content": prompt.system})
    return messages
