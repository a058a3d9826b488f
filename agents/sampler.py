"""Sampler: n reasoning paths for a task, each with its final answer read out.

One request carries all n samples where the server allows (the prompt is processed
once); the answer of each is its projection (tools.answers), None when unreadable.
"""

from __future__ import annotations

from typing import Any

from refinegraph.context import RunContext
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import solver_messages
from refinegraph.tools.answers import get_projection


async def sample_answers(ctx: RunContext, task: str, *, n: int, temperature: float, max_tokens: int,
                         seed: int | None, kind: str, role: str = "solver", first_index: int = 0
                         ) -> list[dict[str, Any]]:
    """n samples as {"index", "text", "answer", "tokens", "model"}; indices continue from
    `first_index` so batches of an adaptive sampler number their samples in order."""
    messages = solver_messages(load_prompt("solver_cot"), task, ctx.conversation,
                               tools_offered=ctx.tools is not None)
    samples = await ctx.sample(role, messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed,
                               tools=ctx.tools)
    project = get_projection(kind)
    model = ctx.model_name(role)
    return [{"index": first_index + i, "text": text.strip(), "answer": project(text),
             "tokens": samples.completion_tokens[i] if i < len(samples.completion_tokens) else 0, "model": model}
            for i, text in enumerate(samples.texts)]
