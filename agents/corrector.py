"""Corrector: rewrites a solution using a verifier's verdict on it.

It sees the task, the latest solution and the verdict's reason, not the whole history
of failed attempts (which the self-correction literature shows can hurt).
"""

from __future__ import annotations

from refinegraph.context import RunContext
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import task_text

NO_REASON = "The checker could not say whether this is right. Check every step and fix any error."
"""What the corrector is told when the verdict carried no reason (e.g. it was unreadable)."""


async def correct_solution(ctx: RunContext, task: str, solution: str, reason: str, *, max_tokens: int,
                           temperature: float, seed: int | None) -> str:
    """The corrected solution's text."""
    messages = load_prompt("corrector").render(task=task_text(task, ctx.conversation), solution=solution,
                                             reason=reason.strip() or NO_REASON)
    samples = await ctx.sample("corrector", messages, temperature=temperature, max_tokens=max_tokens, seed=seed)
    return samples.texts[0].strip()
