"""Judge: picks one of several distinct candidate answers, reading their solutions.

Structured reply {"choice": option number, "reason"}. An unreadable reply, a choice out
of range, or a judge model that fails (ModelError) is a recorded fallback and the judge
returns None: the caller falls back to its vote. A budget refusal propagates.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from refinegraph.context import RunContext
from refinegraph.events import Judge
from refinegraph.models.base import ModelError
from refinegraph.prompts import load_prompt
from refinegraph.tools.structured import StructuredOutputError, parse_structured, response_format_for

MAX_SOLUTION_CHARS = 1500
MIN_JUDGE_TOKENS = 16


class JudgeChoice(BaseModel):
    choice: int = Field(ge=1)
    reason: str = ""


RESPONSE_FORMAT = response_format_for(JudgeChoice, "judge_choice")


def render_options(options: list[dict[str, Any]]) -> str:
    """Options numbered from 1, each its answer and its (truncated) solution."""
    parts = []
    for number, option in enumerate(options, start=1):
        solution = (option.get("solution") or "")[:MAX_SOLUTION_CHARS]
        parts.append(f"Option {number}: answer {option['answer']}\nSolution:\n{solution}")
    return "\n\n".join(parts)


async def judge_answers(ctx: RunContext, task: str, options: list[dict[str, Any]], *, max_tokens: int,
                        seed: int | None) -> int | None:
    """Index (0-based) of the chosen option, or None after a recorded fallback; emits `judge`."""
    labels = [str(o["answer"]) for o in options]
    constrained = ctx.supports_json_schema("judge")
    messages = load_prompt("judge").render(task=task, options=render_options(options))
    try:
        samples = await ctx.sample("judge", messages, temperature=0.0, max_tokens=max_tokens, seed=seed,
                                   response_format=RESPONSE_FORMAT if constrained else None,
                                   min_tokens=MIN_JUDGE_TOKENS)
    except ModelError as exc:
        ctx.fallback("judge_failed", f"the judge model failed: {exc}")
        ctx.emit(Judge(options=labels, chosen=None, reason="judge model failed", parsed_with="fallback"))
        return None
    reply = samples.texts[0]
    try:
        choice, parsed_with = parse_structured(reply, JudgeChoice, constrained=constrained)
        if choice.choice > len(options):
            raise StructuredOutputError(f"choice {choice.choice} but only {len(options)} options")
    except StructuredOutputError as exc:
        ctx.fallback("judge_unparseable", f"no valid choice in the judge's reply: {exc}", reply)
        ctx.emit(Judge(options=labels, chosen=None, reason="", parsed_with="fallback"))
        return None
    index = choice.choice - 1
    ctx.emit(Judge(options=labels, chosen=labels[index], reason=choice.reason.strip()[:1000],
                   parsed_with=parsed_with))
    return index
