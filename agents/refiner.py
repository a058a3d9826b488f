"""Refiner: rewrites the latest candidate using the critic's verdict on it.

It sees the task, the latest output and its critique, not the whole failed history
(which the Self-Refine literature shows can hurt).
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from refinegraph.context import RunContext
from refinegraph.events import Refine
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import answer_text, task_text


def _edits_text(verdict: dict[str, Any]) -> str:
    if verdict["edits"]:
        return "\n".join(f"- {edit}" for edit in verdict["edits"])
    return verdict.get("feedback") or "- (no specific edits; improve correctness and clarity)"


async def refine(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
    """A new candidate from the latest one and its verdict."""
    ctx = runtime.context
    params = state.get("params", {})
    source = len(state["candidates"]) - 1
    verdict = state["verdicts"][-1]
    scores = ", ".join(f"{k} {v}" for k, v in verdict["criteria"].items()) or "not given"
    messages = load_prompt("refiner").render(task=task_text(state["task"], ctx.conversation, ctx.tools),
                                             answer=answer_text(state["candidates"][source]["text"]),
                                             scores=scores, edits=_edits_text(verdict))
    samples = await ctx.sample("refiner", messages, temperature=params.get("temperature", 0.0),
                               max_tokens=params.get("refiner_max_tokens", 384), seed=params.get("seed", 0),
                               tools=ctx.tools)
    iteration = state.get("iteration", 0) + 1
    ctx.emit(Refine(iteration=iteration, from_candidate=source, to_candidate=source + 1))
    return {"candidates": [{"text": samples.texts[0].strip(), "score": None, "origin": f"refiner:{iteration}"}],
            "iteration": iteration}
