"""Stepper: extends a partial solution by one step (step-level search's generator).

A step ends at the delimiter (a blank line for "paragraph", a line break for "line"),
which is also the request's stop sequence; a reply holding more is cut after its first
step. A step is complete (the solution ends) when it states a final answer ("The answer
is", "####", \\boxed) or when the model has nothing more to write (an empty step).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from refinegraph.context import RunContext
from refinegraph.prompts import load_prompt

DELIMITERS = {"paragraph": "\n\n", "line": "\n"}
FINAL = re.compile(r"answer\s*(?:is|:|=)|####|\\boxed", re.IGNORECASE)
STEP_EVENT_CHARS = 2000

StepDelimiter = Literal["paragraph", "line"]


def cut_step(text: str, delimiter: StepDelimiter) -> tuple[str, bool]:
    """(the first step of a reply, whether it completes the solution)."""
    step = text.strip().split(DELIMITERS[delimiter], 1)[0].strip()
    return step, not step or FINAL.search(step) is not None


def render_steps(steps: Sequence[str]) -> str:
    return "\n\n".join(f"Step {i + 1}: {step}" for i, step in enumerate(steps)) or "(none yet)"


async def next_steps(ctx: RunContext, task: str, steps: Sequence[str], n: int, *, temperature: float,
                     max_tokens: int, seed: int | None, delimiter: StepDelimiter) -> list[tuple[str, bool]]:
    """n candidate next steps for the partial solution `steps`, in one request."""
    messages = load_prompt("step").render(task=task, steps=render_steps(steps))
    samples = await ctx.sample("solver", messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed,
                               stop=[DELIMITERS[delimiter]])
    return [cut_step(text, delimiter) for text in samples.texts]
