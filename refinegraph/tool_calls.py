"""Tool calls: what a client offers (`tools`, `tool_choice`, `parallel_tool_calls`) and what a
model answers with (`tool_calls`), carried through a run as text.

Why text: every graph, the replay cache and the trace already carry a sample as its text, and
votes read answers out of texts through projections (tools.answers). A reply with tool calls
is therefore written by the backend as its content (possibly empty) followed by MARKER and a
JSON list of the calls, `[{"id", "name", "arguments"}]` (arguments as the model wrote them).
`decode` reads it back; the `tool_call` projection keys a reply by its calls, normalised as
(name, arguments as canonical JSON), so samples that call the same tool with the same
arguments vote together whatever their ids, key order or spacing. A backend that receives
plain content holding MARKER escapes it (see `escape_marker`), so only a real tool call is
ever read as one: a call the server returned in `tool_calls`, or content that is nothing but
calls of the offered tools (`calls_in_content`, a recorded fallback).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MARKER = "<|refinegraph:tool_calls|>"
ESCAPED_MARKER = "<|refinegraph:tool_calls (quoted)|>"
KEY_PREFIX = "tool_calls:"


class ToolOffer(BaseModel):
    """The tools a client offered with its conversation, sent as given to the model calls
    that answer the conversation (the solver's and sampler's, and the refiner's)."""

    model_config = ConfigDict(extra="forbid")

    tools: list[dict[str, Any]] = Field(min_length=1)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def request_fields(self) -> dict[str, Any]:
        """The chat-completion request fields this offer sets (unset ones are left out)."""
        return self.model_dump(exclude_none=True)

    def names(self) -> list[str]:
        return [str((t.get("function") or {}).get("name", "")) for t in self.tools]


class ToolCall(BaseModel):
    """One call a model asked for."""

    id: str = ""
    name: str
    arguments: str = ""
    """As the model wrote them (OpenAI sends a JSON string; it may not parse)."""

    def parsed_arguments(self) -> Any:
        """The arguments as JSON, or None when they do not parse."""
        try:
            return json.loads(self.arguments) if self.arguments.strip() else {}
        except ValueError:
            return None

    def openai(self, fallback_id: str) -> dict[str, Any]:
        """OpenAI's shape of the call in an assistant message."""
        return {"id": self.id or fallback_id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


def escape_marker(content: str) -> str:
    """Plain content with MARKER spelled otherwise, so it is never read as a tool call."""
    return content.replace(MARKER, ESCAPED_MARKER)


def encode(content: str | None, calls: list[ToolCall]) -> str:
    """A reply's text: its content, then MARKER and the calls."""
    payload = json.dumps([c.model_dump() for c in calls], ensure_ascii=False, separators=(",", ":"))
    return f"{escape_marker(content or '')}{MARKER}{payload}"


def decode(text: str) -> tuple[str, list[ToolCall] | None]:
    """(content, calls) of a reply's text; calls is None for a reply without tool calls
    (or whose call list does not read, which is then plain text)."""
    content, sep, payload = text.partition(MARKER)
    if not sep:
        return text, None
    try:
        data = json.loads(payload)
        calls = [ToolCall.model_validate(item) for item in data] if isinstance(data, list) else None
    except ValueError:  # JSONDecodeError and pydantic's ValidationError
        calls = None
    if not calls:
        return text, None
    return content, calls


_FENCED = re.compile(r"\A```(?:json)?[ \t]*\n(?P<body>.*?)\n?```\Z", re.DOTALL)
_TAG = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _callable_names(offer: ToolOffer) -> tuple[set[str], bool]:
    """(the names a reply may call under the offer's tool_choice, whether several calls may come)."""
    choice = offer.tool_choice
    if choice == "none":
        return set(), False
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        names = {named} if named else set()
    else:
        names = {n for n in offer.names() if n}
    return names, offer.parallel_tool_calls is not False


def calls_in_content(content: str, offer: ToolOffer | None) -> list[ToolCall] | None:
    """Tool calls a model wrote as its whole content instead of in `tool_calls`, or None.

    Some chat templates' models answer a call as text that the serving engine does not
    parse: Qwen2.5-Coder on llama.cpp writes a JSON code block `{"name", "arguments"}`,
    and Hermes-style models `<tool_call>{...}</tool_call>` tags. Read as calls only when
    the content is nothing but such calls (one object or a list, fenced, tagged or bare),
    every name is one the offer's tool_choice allows, and several only where parallel calls
    are allowed; so prose that mentions a tool, or JSON that is an answer, stays text.
    Arguments may be an object or a JSON string. Linear in the content's length (no
    backtracking pattern), and JSON nested too deep for the parser stays text."""
    if offer is None:
        return None
    allowed, several = _callable_names(offer)
    text = content.strip()
    if not allowed or not text.startswith(("{", "[", "`", "<tool_call>")):
        return None
    if text.startswith("<tool_call>"):
        bodies = _TAG.findall(text)
        if _TAG.sub("", text).strip():
            return None  # text between or after the tags: not only calls
    elif fenced := _FENCED.match(text):
        bodies = [fenced.group("body")]
    else:
        bodies = [text]
    items: list[Any] = []
    for body in bodies:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return None
        items += data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not isinstance(item, dict) or set(item) - {"name", "arguments"} and set(item) - {"name", "parameters"}:
            return None
        name, arguments = item.get("name"), item.get("arguments", item.get("parameters", {}))
        if name not in allowed or not isinstance(arguments, (dict, str)):
            return None
        calls.append(ToolCall(name=name, arguments=arguments if isinstance(arguments, str)
                              else json.dumps(arguments, ensure_ascii=False)))
    if not calls or (len(calls) > 1 and not several):
        return None
    return calls


def canonical_arguments(call: ToolCall) -> Any:
    """Arguments parsed as JSON (compared as values); unparseable ones as their stripped text."""
    parsed = call.parsed_arguments()
    return parsed if parsed is not None else call.arguments.strip()


def call_key(calls: list[ToolCall]) -> str:
    """The vote key of a set of calls: each (name, canonical arguments), sorted, as canonical
    JSON. Ids are left out; parallel calls in another order are the same action."""
    items = sorted(json.dumps([c.name, canonical_arguments(c)], sort_keys=True, ensure_ascii=False,
                              separators=(",", ":")) for c in calls)
    return KEY_PREFIX + "[" + ",".join(items) + "]"


def readable(text: str) -> str:
    """A reply as a judging role reads it: tool calls spelled out, content kept."""
    content, calls = decode(text)
    if calls is None:
        return text
    lines = [content.strip()] if content.strip() else []
    lines.append("(This answer calls tools; the client runs them and sends their results back.)")
    for call in calls:
        args = canonical_arguments(call)
        shown = json.dumps(args, ensure_ascii=False, sort_keys=True) if not isinstance(args, str) else args
        lines.append(f"Tool call: {call.name}({shown})")
    return "\n".join(lines)


def describe_tools(offer: ToolOffer) -> str:
    """The offered tools as a judging role reads them (name, description, parameters)."""
    lines = ["Tools the assistant may call:"]
    for tool in offer.tools:
        function = tool.get("function") or {}
        params = json.dumps(function.get("parameters") or {}, ensure_ascii=False, sort_keys=True)
        description = str(function.get("description") or "").strip()
        lines.append(f"- {function.get('name')}{': ' + description if description else ''} (parameters: {params})")
    return "\n".join(lines)


def tool_call_answer(text: str) -> str | None:
    """The `tool_call` projection: a reply with tool calls is keyed by its calls (call_key);
    a reply in words by its text, stripped and with whitespace collapsed (so the final
    answer after the tools ran still votes); an empty reply gives no answer."""
    content, calls = decode(text)
    if calls is not None:
        return call_key(calls)
    words = " ".join(content.split())
    return words or None

