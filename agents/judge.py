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
from refinegraph.prompts.conversation import task_text
from refinegraph.tools.structured import response_format_for, sample_structured

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
    messages = load_prompt("judge").render(task=task_text(task, ctx.conversation), options=render_options(options))
    try:
        asked = await sample_structured(ctx, "judge", messages, JudgeChoice, response_format=RESPONSE_FORMAT,
                                        max_tokens=max_tokens, seed=seed, min_tokens=MIN_JUDGE_TOKENS)
    except ModelError as exc:
        ctx.fallback("judge_failed", f"the judge model failed: {exc}")
        ctx.emit(Judge(options=labels, chosen=None, reason="judge model failed", parsed_with="fallback"))
        return None
    choice, parsed_with, error = asked.value, asked.parsed_with, asked.error
    if choice is not None and choice.choice > len(options):
        choice, error = None, f"choice {choice.choice} but only {len(options)} options"
    if choice is None:
        ctx.fallback("judge_unparseable", f"no valid choice in the judge's reply: {error}", asked.reply)
        ctx.emit(Judge(options=labels, chosen=None, reason="", parsed_with="fallback"))
        return None
    index = choice.choice - 1
    ctx.emit(Judge(options=labels, chosen=labels[index], reason=choice.reason.strip()[:1000],
                   parsed_with=parsed_with))
    return index
