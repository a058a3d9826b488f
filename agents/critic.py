"""Critic: scores the latest candidate against the task and says whether it is done.

Its verdict is structured (json_schema where the backend supports it, tolerant parsing
otherwise); when neither yields a verdict, a `fallback` event records the raw reply and
the verdict counts as unscored and not done.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, field_validator

from refinegraph.context import RunContext
from refinegraph.events import Critique
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import answer_text, task_text
from refinegraph.tools.structured import response_format_for, sample_structured


class CriticVerdict(BaseModel):
    """What the critic must return. Scores outside 1..10 are clamped (small models overshoot)."""

    correctness: int = Field(ge=1, le=10)
    completeness: int = Field(ge=1, le=10)
    clarity: int = Field(ge=1, le=10)
    score: int = Field(ge=1, le=10)
    verdict: Literal["done", "revise"]
    edits: list[str] = Field(default_factory=list, max_length=5)

    @field_validator("correctness", "completeness", "clarity", "score", mode="before")
    @classmethod
    def _clamp(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
            return min(10, max(1, int(float(value))))
        return value

    @field_validator("verdict", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("edits", mode="before")
    @classmethod
    def _edits(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value] if value.strip() else []
        return value[:5] if isinstance(value, list) else value


RESPONSE_FORMAT = response_format_for(CriticVerdict, "critic_verdict")
# A verdict cut shorter than this cannot be valid JSON: the budget refuses such a call.
MIN_VERDICT_TOKENS = 48


async def critique(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Score the latest candidate; the verdict is appended to state["verdicts"]."""
    ctx = runtime.context
    params = state.get("params", {})
    index = len(state["candidates"]) - 1
    candidate = state["candidates"][index]
    messages = load_prompt("critic").render(task=task_text(state["task"], ctx.conversation, ctx.tools),
                                         answer=answer_text(candidate["text"]))
    asked = await sample_structured(ctx, "critic", messages, CriticVerdict, response_format=RESPONSE_FORMAT,
                                    max_tokens=params.get("critic_max_tokens", 256), seed=params.get("seed", 0),
                                    min_tokens=MIN_VERDICT_TOKENS)
    verdict, parsed_with = asked.value, asked.parsed_with
    if verdict is None:
        ctx.fallback("critic_unparseable", f"no valid verdict in the critic's reply: {asked.error}", asked.reply)
        record = {"candidate": index, "score": None, "done": False, "criteria": {}, "edits": [],
                  "feedback": asked.reply.strip()[:1500], "parsed_with": "fallback"}
    else:
        record = {"candidate": index, "score": float(verdict.score), "done": verdict.verdict == "done",
                  "criteria": {"correctness": verdict.correctness, "completeness": verdict.completeness,
                               "clarity": verdict.clarity},
                  "edits": verdict.edits, "feedback": "", "parsed_with": parsed_with}
    ctx.emit(Critique(candidate=index, score=record["score"], done=record["done"],
                      criteria=record["criteria"], edits=record["edits"],
                      parsed_with=record["parsed_with"]))
    return {"verdicts": [record]}
