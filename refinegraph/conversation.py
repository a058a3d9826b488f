"""A client's conversation as a run's input: checked, and its task read from it.

A run's input may be a whole chat (system, developer, user, assistant and tool turns)
rather than one task string; its last user turn is the run's task. How the roles see it
(the solver as sent, the judging roles as a quoted transcript) is prompt rendering, in
refinegraph.prompts.conversation.
"""

from __future__ import annotations

from typing import Any

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
    """The last user turn with text: the run's `task` string (what listings and SQL graphs
    show). An empty user turn after it (a client's placeholder) stays in the conversation."""
    users = [content_text(m.get("content")) for m in conversation if m.get("role") == "user"]
    asked = [text for text in users if text.strip()]
    return asked[-1] if asked else ""


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
        raise ValueError("the conversation has no user message with text (the last one with text is the task)")
    return messages
