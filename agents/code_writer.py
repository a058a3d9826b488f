"""Code writer: n candidate programs for a task in one request, the code read out of each."""

from __future__ import annotations

from typing import Any

from refinegraph.context import RunContext
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import solver_messages
from refinegraph.tools.code import extract_code


async def write_programs(ctx: RunContext, task: str, *, entry_point: str | None, n: int, temperature: float,
                         max_tokens: int, seed: int | None, role: str = "solver") -> list[dict[str, Any]]:
    """Candidates as {"index", "code", "extracted" ("fenced" or "raw"), "text"} (temperature 0
    when n is 1)."""
    messages = solver_messages(load_prompt("code_solver"), task, ctx.conversation)
    samples = await ctx.sample(role, messages, n=n, temperature=temperature if n > 1 else 0.0,
                               max_tokens=max_tokens, seed=seed)
    candidates = []
    for index, text in enumerate(samples.texts):
        code, how = extract_code(text, entry_point)
        candidates.append({"index": index, "code": code, "extracted": how, "text": text})
    return candidates
