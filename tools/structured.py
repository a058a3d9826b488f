"""Structured output: the json_schema request for a pydantic model, and tolerant parsing.

Order of trust: output constrained by json_schema, then JSON found inside free text
(code fences, prose around it, trailing commas, single quotes); a caller records a
fallback when neither yields a valid object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

ParsedWith = Literal["json_schema", "tolerant"]


class StructuredOutputError(ValueError):
    """Text from which no valid object could be read."""


def response_format_for(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The OpenAI `response_format` that constrains output to the model's JSON schema.

    The schema is made strict-mode compatible (every property required, no others), as
    OpenAI's strict mode demands and grammar-constrained servers accept.
    """
    schema = model.model_json_schema()
    schema["additionalProperties"] = False
    schema["required"] = list(schema.get("properties", {}))
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _json_candidates(text: str) -> list[str]:
    """Balanced {...} spans of the text, outermost first, in order."""
    spans, depth, start, in_string, escaped = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    return spans


def _loads_lenient(span: str) -> Any:
    for attempt in (span, _TRAILING_COMMA.sub(r"\1", span),
                    _TRAILING_COMMA.sub(r"\1", span).replace("'", '"')):
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            continue
    raise StructuredOutputError("no parseable JSON object")


def parse_structured(text: str, model: type[T], *, constrained: bool) -> tuple[T, ParsedWith]:
    """Read `model` from a reply; say whether strict JSON sufficed or tolerance was needed."""
    if constrained:
        try:
            return model.model_validate_json(text), "json_schema"
        except ValidationError:
            pass
    errors = []
    for span in _json_candidates(text):
        try:
            return model.model_validate(_loads_lenient(span)), "tolerant"
        except (StructuredOutputError, ValidationError) as exc:
            errors.append(str(exc).splitlines()[0])
    reason = errors[0] if errors else "no JSON object in the reply"
    raise StructuredOutputError(reason)


@dataclass
class StructuredReply(Generic[T]):
    """A structured call's outcome: the object (None when unreadable), how it was read
    ("json_schema", "tolerant" or "fallback"), the raw reply, and why it was unreadable."""

    value: T | None
    parsed_with: str
    reply: str
    error: str = ""


async def sample_structured(ctx: Any, role: str, messages: list[dict[str, Any]], model: type[T], *,
                            response_format: dict[str, Any], max_tokens: int, seed: int | None,
                            min_tokens: int) -> StructuredReply[T]:
    """One temperature-0 call for a `model` object: constrained by json_schema where the
    role's backend supports it, read tolerantly otherwise. The caller records the fallback
    (its kind and substitute are its own) when `value` is None."""
    constrained = ctx.supports_json_schema(role)
    samples = await ctx.sample(role, messages, temperature=0.0, max_tokens=max_tokens, seed=seed,
                               response_format=response_format if constrained else None, min_tokens=min_tokens)
    reply = samples.texts[0]
    try:
        value, parsed_with = parse_structured(reply, model, constrained=constrained)
    except StructuredOutputError as exc:
        return StructuredReply(None, "fallback", reply, str(exc))
    return StructuredReply(value, parsed_with, reply)
