"""Verifier: a structured verdict on one solution (is its final answer correct, and why).

json_schema where the backend supports it, tolerant parsing otherwise. An unreadable
reply is a recorded `verifier_unparseable` fallback and the verdict is `correct=None`
(not verified): the caller decides what that means (SETS treats it as not verified).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from refinegraph.context import RunContext
from refinegraph.events import Verdict
from refinegraph.prompts import load_prompt
from refinegraph.tools.structured import StructuredOutputError, parse_structured, response_format_for

_TRUE = {"true", "yes", "correct", "1"}
_FALSE = {"false", "no", "incorrect", "wrong", "0"}


class VerifierVerdict(BaseModel):
    """What the verifier must return; "yes"/"no" strings are read as booleans (small models)."""

    correct: bool
    reason: str = Field("", max_length=4000)

    @field_validator("correct", mode="before")
    @classmethod
    def _boolean(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        return value

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: Any) -> Any:
        return value[:4000] if isinstance(value, str) else value


RESPONSE_FORMAT = response_format_for(VerifierVerdict, "verifier_verdict")
MIN_VERDICT_TOKENS = 24
"""A verdict cut shorter than this cannot be valid JSON: the budget refuses such a call."""


async def verify_solution(ctx: RunContext, task: str, solution: str, *, subject: str, max_tokens: int,
                          seed: int | None) -> dict[str, Any]:
    """Verdict on `solution` as {"correct": bool|None, "reason", "parsed_with"}; emits `verdict`."""
    constrained = ctx.supports_json_schema("verifier")
    messages = load_prompt("verifier").render(task=task, solution=solution)
    samples = await ctx.sample("verifier", messages, temperature=0.0, max_tokens=max_tokens, seed=seed,
                               response_format=RESPONSE_FORMAT if constrained else None,
                               min_tokens=MIN_VERDICT_TOKENS)
    reply = samples.texts[0]
    try:
        verdict, parsed_with = parse_structured(reply, VerifierVerdict, constrained=constrained)
    except StructuredOutputError as exc:
        ctx.fallback("verifier_unparseable", f"no valid verdict on {subject}: {exc}", reply)
        record: dict[str, Any] = {"correct": None, "reason": "", "parsed_with": "fallback"}
    else:
        record = {"correct": verdict.correct, "reason": verdict.reason.strip(), "parsed_with": parsed_with}
    ctx.emit(Verdict(subject=subject, correct=record["correct"], reason=record["reason"][:1000]))
    return record
