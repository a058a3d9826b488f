"""Solver: writes a first answer to the task."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from refinegraph.context import RunContext
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import solver_messages


async def solve(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One greedy answer to `state["task"]`, appended as candidate 0."""
    params = state.get("params", {})
    messages = solver_messages(load_prompt("solver"), state["task"], runtime.context.conversation,
                               tools_offered=runtime.context.tools is not None)
    samples = await runtime.context.sample(
        "solver", messages, temperature=params.get("temperature", 0.0),
        max_tokens=params.get("solver_max_tokens", 384), seed=params.get("seed", 0),
        tools=runtime.context.tools)
    return {"candidates": [{"text": samples.texts[0].strip(), "score": None, "origin": "solver"}]}
