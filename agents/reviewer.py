"""Reviewer (MAgICoRe): targeted feedback on one solution, guided by its step scores.

It sees the task and the solution's steps each with its reward score, and nothing of
the generator's prompt or of other solutions (evaluator context kept apart). Its
feedback is free text for the refiner to read, never parsed for a decision.
"""

from __future__ import annotations

from refinegraph.context import RunContext
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import task_text
from refinegraph.tools.reward import numbered_steps, split_steps


async def review(ctx: RunContext, task: str, solution: str, step_scores: list[float], *, max_tokens: int,
                 seed: int | None) -> str:
    """Feedback on `solution` (role "reviewer", temperature 0)."""
    steps = numbered_steps(split_steps(solution), step_scores)
    messages = load_prompt("reviewer").render(task=task_text(task, ctx.conversation), steps=steps)
    samples = await ctx.sample("reviewer", messages, temperature=0.0, max_tokens=max_tokens, seed=seed)
    return samples.texts[0].strip()
