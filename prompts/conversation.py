"""A client's conversation as model input: the solver's messages and a quoted transcript.

A run's input may be a whole chat (system, developer, user, assistant and tool turns)
rather than one task string. The solver and sampler then see the conversation as the
client sent it; roles that judge an answer (critic, verifier, refiner, judge) get it
quoted as a transcript in place of the task, so they judge the reply to that chat. With
no conversation, both fall back to the one-task prompt (the one-user-message case).
"""

from __future__ import annotations

from typing import Any

from refinegraph.prompts import Prompt
from refinegraph.tool_calls import ToolOffer, describe_tools, readable

Conversation = list[dict[str, Any]]


def content_text(content: Any) -> str:
    """A message's text: a string as is, text parts joined, None as empty."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return str(content)


def last_user_text(conversation: Conversation) -> str:
    """The last user turn's text: the run's `task` string (what listings and SQL graphs show)."""
    users = [content_text(m.get("content")) for m in conversation if m.get("role") == "user"]
    return users[-1] if users else ""


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


def solver_messages(prompt: Prompt, task: str, conversation: Conversation | None) -> list[dict[str, Any]]:
    """The solver's messages: the conversation as sent (the prompt's system text is
    added only when the client sent no system or developer message), else the prompt."""
    if not conversation:
        return prompt.render(task=task)
    messages = [dict(m) for m in conversation]
    if prompt.system and not any(m.get("role") in ("system", "developer") for m in messages):
        messages.insert(0, {"role": "system", "content": prompt.system})
    return messages



ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def check_conversation(messages: Any) -> Conversation:
    """`messages` as a conversation, or ValueError naming the first thing wrong with it."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation is a non-empty JSON list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is not an object with a role and content")
        if message.get("role") not in ROLES:
            raise ValueError(f"message {i} has role {message.get('role')!r}; expected one of {', '.join(ROLES)}")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ValueError(f"message {i}: content must be a string, a list of text parts or null")
    if not last_user_text(messages).strip():
        raise ValueError("the conversation has no user message with text (its last user turn is the task)")
    return messages
