"""Best-of-N: n samples in one request, each scored by the reward scorer, the best kept.

Selection (tools.reward.best_index): the highest outcome reward wins, the earliest
sample on ties; an unscored sample (judge reply unparseable, reward server down) loses
to every scored one. When no sample is scored, a majority vote over their answers
decides instead (recorded as a `no_scores` fallback). A refused call while scoring
stops the scoring and chooses among the samples scored so far (stop_reason "budget").

Scorer: an LLM judge (role "reward") by default, or a reward-model server when
`reward_model` names a config entry (see tools.reward). Input: {"task": str}. Output
adds answer (the chosen sample's answer as users write it, or its raw text when no
answer could be read from it), solution, chosen, score, stop_reason.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.runtime import Runtime
from pydantic import Field

from refinegraph.agents.sampler import sample_answers
from refinegraph.agents.scorer import make_scorer, reward_models, score_candidates
from refinegraph.context import RunContext
from refinegraph.events import Stop, Vote
from refinegraph.graphs.consistency import TOOL_PARAMS, AnswerParams, vote_payload
from refinegraph.registry import MODEL_NAME, register_graph
from refinegraph.tools.answers import display
from refinegraph.tools.reward import best_index
from refinegraph.wiring import MethodGraph


class ScorerParams(AnswerParams):
    """What a reward-scored graph takes to build its scorer (see tools.reward)."""

    judge_max_tokens: int = Field(160, ge=24)
    reward_model: str | None = Field(None, json_schema_extra={MODEL_NAME: True})
    """A config model entry serving a reward model (vLLM /pooling); None: the LLM judge."""
    reward_step_separator: str | None = None
    """For a process reward model: the text put after each step (e.g. "<extra_0>")."""


class RewardParams(ScorerParams):
    n: int = Field(8, ge=1, le=256)
    temperature: float = Field(0.7, ge=0.0, le=2.0)


class BestOfNState(TypedDict, total=False):
    task: str
    params: dict[str, Any]
    samples: Annotated[list[dict[str, Any]], operator.add]
    scores: Annotated[list[dict[str, Any]], operator.add]
    stop_reason: str
    answer: str | None
    solution: str | None
    chosen: int | None
    score: float | None


def answer_of(sample: dict[str, Any], kind: str) -> str | None:
    """The sample's answer as users write it; its raw text when no answer was read."""
    return display(sample["answer"], kind) if sample["answer"] is not None else sample["text"]


async def finish(state: BestOfNState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Choose the best-scored sample (see the module docstring) and record why."""
    ctx = runtime.context
    samples = state.get("samples", [])
    outcomes = {s["candidate"]: s["outcome"] for s in state.get("scores", [])}
    reason = state.get("stop_reason") or "done"
    chosen = best_index([outcomes.get(s["index"]) for s in samples])
    score = outcomes.get(chosen) if chosen is not None else None
    if chosen is None and samples:
        ctx.fallback("no_scores", f"none of {len(samples)} samples has a reward score: majority vote instead")
        payload = vote_payload(samples)
        ctx.emit(Vote(**payload))
        winner = payload["winner"]
        chosen = next((s["index"] for s in samples if winner is not None and s["answer"] == winner), 0)
    ctx.emit(Stop(reason=reason, chosen=chosen, score=score))
    if chosen is None:
        return {"answer": None, "solution": None, "chosen": None, "score": None, "stop_reason": reason}
    sample = samples[chosen]
    return {"answer": answer_of(sample, state["params"]["answer"]), "solution": sample["text"], "chosen": chosen,
            "score": score, "stop_reason": reason}


def build_best_of_n(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    settings = RewardParams.model_validate(params or {}).model_dump()

    async def sample(state: BestOfNState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        samples = await sample_answers(runtime.context, state["task"], n=settings["n"],
                                       temperature=settings["temperature"], max_tokens=settings["max_tokens"],
                                       seed=settings["seed"], kind=settings["answer"])
        return {"samples": samples}

    async def score(state: BestOfNState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        records, stopped = await score_candidates(ctx, make_scorer(ctx, settings), state["task"], state["samples"])
        return {"scores": records, **({"stop_reason": "budget"} if stopped else {})}

    graph = MethodGraph(BestOfNState, settings)
    graph.node("sampler", sample, budget=True)
    graph.node("scorer", score)
    graph.node("finish", finish)
    graph.unless_stopped("sampler", "scorer")
    graph.edge("scorer", "finish")
    return graph.compile(checkpointer, name="best-of-n")


def register() -> None:
    register_graph("best-of-n", build_best_of_n,
                   "Best-of-N: n samples, each scored by a reward model or LLM judge; the highest score wins",
                   params=RewardParams, sets=("solution", "chosen", "score"), uses_models=reward_models,
                   tool_params=TOOL_PARAMS)


register()
