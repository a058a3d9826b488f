"""MAgICoRe (Chen et al.): easy problems get a reward-weighted vote, hard ones targeted
refinement (Solver -> Reviewer -> Refiner, re-scored), repeated up to a cap.

1. k samples (one request), each scored by the reward scorer: outcome and per step
   (an LLM judge, or a reward-model server when `reward_model` is set; tools.reward).
2. Decide (a `difficulty` event with both signals and thresholds): *hard* when both
   (a) the mean outcome reward of the current solutions that agree with the (plain)
   majority answer is below `reward_threshold` (no scored member counts as below) and
   (b) the reward-weighted vote's confidence (winner weight / total weight) is below
   `confidence_threshold`. Easy -> finish.
3. Hard -> which to refine: the current solutions whose reward is below
   `reward_threshold` (unscored first, then lowest reward, then earliest), at most
   `refine_top` per iteration, never the same version twice (the paper refines every
   solution; we keep it small for CPU machines). The reviewer sees the task, the
   solution and each step's score and writes feedback; the refiner gets task, solution
   and feedback only. Each correction is a `refine` event.
4. Re-score the corrections. A correction replaces its source only when it scores
   strictly higher (refine only what needs it; keep the original unless the revision
   wins). Then decide again: at most `max_iterations` rounds of refinement.
5. Finish: a reward-weighted vote (weight = outcome reward, unscored = 0) over the
   current solutions; when none is scored, a plain majority vote (`no_rewards`
   fallback). A refused call anywhere ends here, stop_reason "budget".

Stop reasons: easy, max_iterations, nothing_to_refine, budget. Input: {"task": str};
output adds answer, solution, chosen (candidate index), vote, stop_reason.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.runtime import Runtime
from pydantic import Field

from refinegraph.agents.math_refiner import refine_solution
from refinegraph.agents.reviewer import review
from refinegraph.agents.sampler import sample_answers
from refinegraph.agents.scorer import make_scorer, reward_models, score_candidates
from refinegraph.budget import BudgetExceeded
from refinegraph.context import RunContext
from refinegraph.events import Difficulty, Refine, Stop, Vote
from refinegraph.graphs.best_of_n import ScorerParams
from refinegraph.registry import register_graph
from refinegraph.tools.answers import display, get_projection
from refinegraph.tools.voting import majority_vote
from refinegraph.wiring import MethodGraph


class MagicoreParams(ScorerParams):
    k: int = Field(8, ge=1, le=256)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    reward_threshold: float = Field(0.6, ge=0.0, le=1.0)
    confidence_threshold: float = Field(0.6, ge=0.0, le=1.0)
    max_iterations: int = Field(3, ge=0, le=10)
    refine_top: int = Field(2, ge=1, le=64)
    reviewer_max_tokens: int = Field(192, ge=16)
    refiner_max_tokens: int = Field(256, ge=16)
    refiner_temperature: float = Field(0.7, ge=0.0, le=2.0)


class MagicoreState(TypedDict, total=False):
    task: str
    params: dict[str, Any]
    candidates: Annotated[list[dict[str, Any]], operator.add]
    scores: Annotated[list[dict[str, Any]], operator.add]
    current: list[int]
    attempted: list[int]
    targets: list[int]
    reviews: list[dict[str, Any]]
    fresh: list[dict[str, int]]
    iteration: int
    stop_reason: str
    vote: dict[str, Any]
    answer: str | None
    solution: str | None
    chosen: int | None


def _outcomes(state: MagicoreState) -> dict[int, float | None]:
    return {s["candidate"]: s["outcome"] for s in state.get("scores", [])}


def difficulty(answers: list[str | None], rewards: list[float | None], reward_threshold: float,
               confidence_threshold: float) -> tuple[str, float | None, float]:
    """(label, majority reward, weighted-vote confidence) of the current solutions."""
    plain = majority_vote(answers)
    majority = plain.winner.key if plain.winner else None
    agreeing = [r for a, r in zip(answers, rewards, strict=True) if majority is not None and a == majority
                and r is not None]
    majority_reward = round(sum(agreeing) / len(agreeing), 6) if agreeing else None
    confidence = round(majority_vote(answers, [r or 0.0 for r in rewards]).agreement, 6)
    low_reward = majority_reward is None or majority_reward < reward_threshold
    return ("hard" if low_reward and confidence < confidence_threshold else "easy"), majority_reward, confidence


def refine_targets(current: list[int], outcomes: dict[int, float | None], attempted: set[int],
                   reward_threshold: float, top: int) -> list[int]:
    """Which current solutions to refine (rule in the module docstring)."""
    eligible = [c for c in current if c not in attempted
                and (outcomes.get(c) is None or outcomes[c] < reward_threshold)]  # type: ignore[operator]
    eligible.sort(key=lambda c: (outcomes.get(c) is not None, outcomes.get(c) or 0.0, current.index(c)))
    return eligible[:top]


async def finish(state: MagicoreState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Reward-weighted vote over the current solutions, recorded, and the answer."""
    ctx = runtime.context
    candidates = state.get("candidates", [])
    current = state.get("current", [])
    outcomes = _outcomes(state)
    reason = state.get("stop_reason") or "done"
    answers = [candidates[c]["answer"] for c in current]
    weights = [outcomes.get(c) or 0.0 for c in current]
    if current and not any(weights):
        ctx.fallback("no_rewards", "no current solution has a reward: plain majority vote instead")
        outcome = majority_vote(answers)
    else:
        outcome = majority_vote(answers, weights)
    payload = outcome.as_event()
    for group in payload["groups"]:  # positions -> candidate indices, as the trace names them
        group["members"] = [current[m] for m in group["members"]]
    payload["failed"] = [current[m] for m in payload["failed"]]
    ctx.emit(Vote(**payload))
    winner = payload["winner"]
    chosen, score = None, None
    if winner is not None:
        members = payload["groups"][0]["members"]
        chosen = max(members, key=lambda c: (outcomes.get(c) if outcomes.get(c) is not None else -1.0,
                                             -members.index(c)))
        score = outcomes.get(chosen)
    elif current:
        chosen = current[0]
    ctx.emit(Stop(reason=reason, chosen=chosen, score=score))
    kind = state["params"]["answer"]
    solution = candidates[chosen]["text"] if chosen is not None else None
    answer = display(winner, kind) if winner is not None else solution
    return {"vote": payload, "answer": answer, "solution": solution, "chosen": chosen, "stop_reason": reason}


def build_magicore(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    settings = MagicoreParams.model_validate(params or {}).model_dump()

    async def sample(state: MagicoreState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        samples = await sample_answers(runtime.context, state["task"], n=settings["k"],
                                       temperature=settings["temperature"], max_tokens=settings["max_tokens"],
                                       seed=settings["seed"], kind=settings["answer"])
        for s in samples:
            s["origin"] = "solver"
        return {"candidates": samples, "current": [s["index"] for s in samples]}

    async def score(state: MagicoreState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Score what is unscored; then accept each correction that beats its source."""
        ctx = runtime.context
        outcomes = _outcomes(state)
        todo = [c for c in state["candidates"] if c["index"] not in outcomes]
        records, stopped = await score_candidates(ctx, make_scorer(ctx, settings), state["task"], todo)
        outcomes.update({r["candidate"]: r["outcome"] for r in records})
        current = list(state["current"])
        for pair in state.get("fresh", []):
            new, old = outcomes.get(pair["to"]), outcomes.get(pair["from"])
            if new is not None and (old is None or new > old):
                current[current.index(pair["from"])] = pair["to"]
        return {"scores": records, "current": current, "fresh": [], **({"stop_reason": "budget"} if stopped else {})}

    async def decide(state: MagicoreState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        outcomes = _outcomes(state)
        current = state["current"]
        answers = [state["candidates"][c]["answer"] for c in current]
        label, majority_reward, confidence = difficulty(
            answers, [outcomes.get(c) for c in current], settings["reward_threshold"],
            settings["confidence_threshold"])
        iteration = state.get("iteration", 0)
        runtime.context.emit(Difficulty(label=label, iteration=iteration, majority_reward=majority_reward,
                                        confidence=confidence,
                                        thresholds={"reward": settings["reward_threshold"],
                                                    "confidence": settings["confidence_threshold"]}))
        if label == "easy":
            return {"stop_reason": "easy"}
        if iteration >= settings["max_iterations"]:
            return {"stop_reason": "max_iterations"}
        targets = refine_targets(current, outcomes, set(state.get("attempted", [])), settings["reward_threshold"],
                                 settings["refine_top"])
        if not targets:
            return {"stop_reason": "nothing_to_refine"}
        return {"targets": targets}

    async def reviewer(state: MagicoreState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        steps = {s["candidate"]: s["steps"] for s in state.get("scores", [])}
        reviews: list[dict[str, Any]] = []
        for target in state["targets"]:
            try:
                feedback = await review(ctx, state["task"], state["candidates"][target]["text"],
                                        steps.get(target, []), max_tokens=settings["reviewer_max_tokens"],
                                        seed=settings["seed"])
            except BudgetExceeded:
                return {"reviews": [], "stop_reason": "budget"}
            reviews.append({"from": target, "feedback": feedback})
        return {"reviews": reviews}

    async def refiner(state: MagicoreState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        iteration = state.get("iteration", 0) + 1
        project = get_projection(settings["answer"])
        next_index = len(state["candidates"])
        made: list[dict[str, Any]] = []
        fresh: list[dict[str, int]] = []
        update: dict[str, Any] = {}
        for item in state["reviews"]:
            try:
                text = await refine_solution(ctx, state["task"], state["candidates"][item["from"]]["text"],
                                             item["feedback"], max_tokens=settings["refiner_max_tokens"],
                                             temperature=settings["refiner_temperature"],
                                             seed=settings["seed"] + iteration)
            except BudgetExceeded:
                update["stop_reason"] = "budget"
                break
            index = next_index + len(made)
            made.append({"index": index, "text": text, "answer": project(text), "tokens": 0,
                         "model": ctx.model_name("refiner"), "origin": f"refiner:{iteration}:{item['from']}"})
            fresh.append({"from": item["from"], "to": index})
            ctx.emit(Refine(iteration=iteration, from_candidate=item["from"], to_candidate=index))
        attempted = list(state.get("attempted", [])) + [r["from"] for r in state["reviews"]]
        return {"candidates": made, "fresh": fresh, "attempted": attempted, "iteration": iteration,
                "reviews": [], **update}

    graph = MethodGraph(MagicoreState, settings, start={"iteration": 0, "current": [], "attempted": [], "fresh": []})
    graph.node("solver", sample, budget=True)
    graph.node("scorer", score)
    graph.node("decide", decide)
    graph.node("reviewer", reviewer)
    graph.node("refiner", refiner)
    graph.node("finish", finish)
    graph.unless_stopped("solver", "scorer")
    graph.unless_stopped("scorer", "decide")
    graph.unless_stopped("decide", "reviewer")
    graph.unless_stopped("reviewer", "refiner")
    graph.unless_stopped("refiner", "scorer")
    return graph.compile(checkpointer, name="magicore")


def register() -> None:
    register_graph("magicore", build_magicore,
                   "MAgICoRe: reward-scored samples; easy -> weighted vote, hard -> reviewer/refiner rounds",
                   params=MagicoreParams, sets=("solution", "chosen", "vote"), uses_models=reward_models)


register()
