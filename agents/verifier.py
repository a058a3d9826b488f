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
from refinegraph.prompts.conversation import answer_text, task_text
from refinegraph.tools.structured import response_format_for, sample_structured

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
    messages = load_prompt("verifier").render(task=task_text(task, ctx.conversation, ctx.tools),
                                               solution=answer_text(solution))
    asked = await sample_structured(ctx, "verifier", messages, VerifierVerdict, response_format=RESPONSE_FORMAT,
                                    max_tokens=max_tokens, seed=seed, min_tokens=MIN_VERDICT_TOKENS)
    verdict, parsed_with = asked.value, asked.parsed_with
    if verdict is None:
        ctx.fallback("verifier_unparseable", f"no valid verdict on {subject}: {asked.error}", asked.reply)
        record: dict[str, Any] = {"correct": None, "reason": "", "parsed_with": "fallback"}
    else:
        record = {"correct": verdict.correct, "reason": verdict.reason.strip(), "parsed_with": parsed_with}
    ctx.emit(Verdict(subject=subject, correct=record["correct"], reason=record["reason"][:1000]))
    return record
