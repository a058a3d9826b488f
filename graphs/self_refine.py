"""Self-Refine (Madaan et al.): solver -> critic -> refiner -> critic ... with guards.

Stops when the critic says "done", when the score stops improving, or after
`max_iterations` refinements; returns the best-scored version (ties keep the earlier
one, so a revision must win to replace the original). A refused call (budget) ends the
run with the best answer so far and stop_reason="budget".

An unscored candidate (the critic's reply could not be parsed; recorded as a fallback)
never counts as an improvement, and is chosen only when no candidate has a score.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from refinegraph.agents.critic import critique
from refinegraph.agents.refiner import refine
from refinegraph.agents.solver import solve
from refinegraph.context import RunContext
from refinegraph.events import Stop
from refinegraph.registry import register_graph
from refinegraph.wiring import MethodGraph


class SelfRefineParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_iterations: int = Field(3, ge=0, le=20)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 0
    solver_max_tokens: int = Field(384, ge=8)
    critic_max_tokens: int = Field(256, ge=16)
    refiner_max_tokens: int = Field(384, ge=8)


class SelfRefineState(TypedDict, total=False):
    task: str
    params: dict[str, Any]
    candidates: Annotated[list[dict[str, Any]], operator.add]
    verdicts: Annotated[list[dict[str, Any]], operator.add]
    iteration: int
    stop_reason: str
    answer: str | None
    chosen: int


def best_candidate(candidates: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> tuple[int | None, float | None]:
    """Index and score of the best-scored candidate; earliest wins ties; unscored lose."""
    scores = {v["candidate"]: v["score"] for v in verdicts if v["score"] is not None}
    if not candidates:
        return None, None
    if not scores:
        return 0, None
    best = max(scores, key=lambda i: (scores[i], -i))
    return best, scores[best]


async def decide(state: SelfRefineState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """After each verdict: done, no improvement, cap reached, or refine again."""
    verdict = state["verdicts"][-1]
    latest = verdict["candidate"]
    if verdict["done"]:
        return {"stop_reason": "done"}
    if latest > 0:
        earlier = [v["score"] for v in state["verdicts"][:-1] if v["score"] is not None]
        if verdict["score"] is None or (earlier and verdict["score"] <= max(earlier)):
            return {"stop_reason": "no_improvement"}
    if state.get("iteration", 0) >= state["params"]["max_iterations"]:
        return {"stop_reason": "max_iterations"}
    return {}


async def finish(state: SelfRefineState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    candidates = state.get("candidates", [])
    chosen, score = best_candidate(candidates, state.get("verdicts", []))
    reason = state.get("stop_reason", "max_iterations")
    runtime.context.emit(Stop(reason=reason, chosen=chosen, score=score))
    answer = candidates[chosen]["text"] if chosen is not None else None
    return {"answer": answer, "chosen": chosen if chosen is not None else -1, "stop_reason": reason}


def build_self_refine(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    """The compiled Self-Refine graph. Input: {"task": str}; output adds answer, stop_reason."""
    settings = SelfRefineParams.model_validate(params or {}).model_dump()

    async def start(state: SelfRefineState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        return {"params": {**settings, **state.get("params", {})}, "iteration": 0}

    graph = MethodGraph(SelfRefineState, settings, start=start)
    graph.node("solver", solve, budget=True)
    graph.node("critic", critique, budget=True)
    graph.node("decide", decide)
    graph.node("refiner", refine, budget=True)
    graph.node("finish", finish)
    graph.unless_stopped("solver", "critic")
    graph.unless_stopped("critic", "decide")
    graph.unless_stopped("decide", "refiner")
    graph.unless_stopped("refiner", "critic")
    return graph.compile(checkpointer, name="self-refine")


def register() -> None:
    register_graph("self-refine", build_self_refine,
                   "Self-Refine: solve, critique (structured verdict), refine; best-scored version wins",
                   params=SelfRefineParams, sets=("chosen",), tool_params={})


register()
