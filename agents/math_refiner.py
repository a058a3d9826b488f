"""Refiner (MAgICoRe): a corrected solution from one solution and the reviewer's feedback.

It sees the task, that solution and the feedback on it, not the whole history of
attempts (which the refinement literature shows can hurt).
"""

from __future__ import annotations

from refinegraph.context import RunContext
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import task_text


async def refine_solution(ctx: RunContext, task: str, solution: str, feedback: str, *, max_tokens: int,
                          temperature: float, seed: int | None) -> str:
    """The corrected solution's text (role "refiner")."""
    messages = load_prompt("math_refiner").render(task=task_text(task, ctx.conversation), solution=solution,
                                                  feedback=feedback or "(no feedback)")
    samples = await ctx.sample("refiner", messages, temperature=temperature, max_tokens=max_tokens, seed=seed)
    return samples.texts[0].strip()
