"""Greedy, self-consistency and adaptive self-consistency: sample, read answers, vote.

- greedy: one sample at temperature 0; the baseline every method is measured against.
- self-consistency (Wang et al.): n samples in one request, answers projected
  (tools.answers), a majority vote; ties go to the answer sampled first.
- adaptive-sc (Adaptive-Consistency, ESC): batches of `batch_size`; after each, a
  `sampling_check` event with the counts and the posterior that the leader is the
  majority; stop at `threshold` ("beta" or "dirichlet" rule) or at the first batch whose
  answers all agree ("esc"), or at `max_n`.

Input: {"task": str}. Output adds answer (the winning answer, as users write it),
solution (the first sample that gave it), agreement and stop_reason. A refused call
(budget) stops with the vote over the samples so far.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from refinegraph.agents.sampler import sample_answers
from refinegraph.context import RunContext
from refinegraph.events import SamplingCheck, Stop, Vote
from refinegraph.registry import register_graph
from refinegraph.tools.answers import AnswerKind, display
from refinegraph.tools.stopping import posterior_check, window_check
from refinegraph.tools.voting import majority_vote
from refinegraph.wiring import MethodGraph

TOOL_PARAMS = {"answer": "tool_call"}
"""With offered tools the vote is over tool calls (normalised name and arguments) and texts."""


class AnswerParams(BaseModel):
    """What every answer-voting graph takes; greedy takes only these."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    max_tokens: int = Field(256, ge=8)
    answer: AnswerKind = "number"
    """The answer type to vote on: number, choice, date, text, or a registered projection."""


class SamplingParams(AnswerParams):
    n: int = Field(8, ge=1, le=256)
    temperature: float = Field(0.7, ge=0.0, le=2.0)


class AdaptiveParams(SamplingParams):
    n: int = Field(16, ge=1, le=256)
    """The most samples (max N)."""
    batch_size: int = Field(2, ge=1, le=64)
    threshold: float = Field(0.95, gt=0.5, lt=1.0)
    """Defaults chosen on half of the shared Date and GSM8K pools (even positions) by a rule
    fixed beforehand (at least 9x fewer samples than SC@40 on Date's half, then the fewest
    answers that differ from SC's, then the fewest savings above that floor) and scored on
    the other half: batch 2 at 0.95 stops after 4 unanimous samples. See docs/benchmarks.md."""
    rule: Literal["beta", "dirichlet", "esc"] = "beta"


class VoteState(TypedDict, total=False):
    task: str
    params: dict[str, Any]
    samples: Annotated[list[dict[str, Any]], operator.add]
    batches: int
    vote: dict[str, Any]
    stop_reason: str
    answer: str | None
    solution: str | None
    agreement: float


def vote_payload(samples: list[dict[str, Any]], weights: list[float] | None = None) -> dict[str, Any]:
    """The vote over samples' answers, as the `vote` event and state carry it."""
    return majority_vote([s["answer"] for s in samples], weights).as_event()


async def finish(state: VoteState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Vote over every sample taken, record it, and answer with the winner."""
    samples = state.get("samples", [])
    payload = vote_payload(samples)
    ctx = runtime.context
    ctx.emit(Vote(**payload))
    reason = state.get("stop_reason") or "done"
    winner = payload["winner"]
    if winner is None and samples and reason == "done":
        reason = "no_answer"
    chosen = next((s["index"] for s in samples if winner is not None and s["answer"] == winner), None)
    ctx.emit(Stop(reason=reason, chosen=chosen))
    kind = state["params"]["answer"]
    solution = next((s["text"] for s in samples if s["index"] == chosen), samples[0]["text"] if samples else None)
    return {"vote": payload, "answer": display(winner, kind), "solution": solution,
            "agreement": payload["agreement"], "stop_reason": reason}


def _build_fixed(params: dict[str, Any] | None, *, name: str, defaults: dict[str, Any], checkpointer: Any) -> Any:
    settings = SamplingParams.model_validate({**defaults, **(params or {})}).model_dump()

    async def sample(state: VoteState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        samples = await sample_answers(runtime.context, state["task"], n=settings["n"],
                                       temperature=settings["temperature"], max_tokens=settings["max_tokens"],
                                       seed=settings["seed"], kind=settings["answer"])
        return {"samples": samples}

    graph = MethodGraph(VoteState, settings)
    graph.node("sampler", sample, budget=True)
    graph.node("finish", finish)
    graph.edge("sampler", "finish")
    return graph.compile(checkpointer, name=name)


def build_greedy(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    """One sample at temperature 0 (n and temperature are fixed: passing them is an error)."""
    AnswerParams(**(params or {}))
    return _build_fixed(params, name="greedy", defaults={"n": 1, "temperature": 0.0}, checkpointer=checkpointer)


def build_self_consistency(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    return _build_fixed(params, name="self-consistency", defaults={}, checkpointer=checkpointer)


def check(samples: list[dict[str, Any]], settings: dict[str, Any]) -> SamplingCheck:
    """The stopping decision after a batch (see the module docstring)."""
    outcome = majority_vote([s["answer"] for s in samples])
    leader = outcome.winner.key if outcome.winner else None
    if settings["rule"] == "esc":
        decision = window_check([s["answer"] for s in samples[-settings["batch_size"]:]])
        threshold = None
    else:
        decision = posterior_check(outcome.counts, settings["threshold"], settings["rule"])
        threshold = settings["threshold"]
    if decision.stop:
        reason = "confident"
    elif len(samples) >= settings["n"]:
        reason = "max_n"
    else:
        reason = "continue"
    return SamplingCheck(samples=len(samples), counts=outcome.counts, leader=leader, rule=decision.rule,
                         posterior=decision.posterior, threshold=threshold, stop=reason != "continue",
                         reason=reason)


def build_adaptive_sc(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    settings = AdaptiveParams.model_validate(params or {}).model_dump()

    async def sample(state: VoteState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        taken = len(state.get("samples", []))
        batch = min(settings["batch_size"], settings["n"] - taken)
        # each batch its own seed: a repeated seed would make a server repeat its samples
        samples = await sample_answers(runtime.context, state["task"], n=batch,
                                       temperature=settings["temperature"], max_tokens=settings["max_tokens"],
                                       seed=settings["seed"] + state.get("batches", 0), kind=settings["answer"],
                                       first_index=taken)
        return {"samples": samples, "batches": state.get("batches", 0) + 1}

    async def decide(state: VoteState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        event = check(state["samples"], settings)
        runtime.context.emit(event)
        return {"stop_reason": event.reason if event.stop else ""}

    graph = MethodGraph(VoteState, settings, start={"batches": 0})
    graph.node("sampler", sample, budget=True)
    graph.node("check", decide)
    graph.node("finish", finish)
    graph.unless_stopped("sampler", "check")
    graph.unless_stopped("check", "sampler")
    return graph.compile(checkpointer, name="adaptive-sc")


def register() -> None:
    outputs = ("solution", "agreement", "vote")
    register_graph("greedy", build_greedy, "Greedy: one sample at temperature 0, its answer read out",
                   params=AnswerParams, sets=outputs,
                   tool_params=TOOL_PARAMS)
    register_graph("self-consistency", build_self_consistency,
                   "Self-consistency: n samples in one request, majority vote over normalized answers",
                   params=SamplingParams, sets=outputs,
                   tool_params=TOOL_PARAMS)
    register_graph("adaptive-sc", build_adaptive_sc,
                   "Adaptive self-consistency: sample in batches until a Beta/Dirichlet posterior (or ESC) says stop",
                   params=AdaptiveParams, sets=outputs,
                   tool_params=TOOL_PARAMS)


register()
