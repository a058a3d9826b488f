"""Scorer node helper: reward scores for candidates, one `score` event each, as scored.

Candidates are scored one after another (not concurrently), so the trace's order of
calls and decisions is the same in the run and in its replay. Candidates with the same
text get the first one's scores (one call). A refused call (budget) stops the scoring:
what was scored so far is returned with `stopped=True`.
"""

from __future__ import annotations

from typing import Any

from refinegraph.budget import BudgetExceeded
from refinegraph.context import RunContext
from refinegraph.events import Score
from refinegraph.tools.reward import JudgeScorer, RewardModelScorer, Scorer, Scores


def make_scorer(ctx: RunContext, settings: dict[str, Any]) -> Scorer:
    """The reward-model server named by `settings["reward_model"]`, else the LLM judge."""
    if settings.get("reward_model"):
        return RewardModelScorer(settings["reward_model"], step_separator=settings.get("reward_step_separator"))
    return JudgeScorer(seed=settings.get("seed", 0), max_tokens=settings.get("judge_max_tokens", 160))


def reward_models(params: dict[str, Any], config: Any) -> list[str]:
    """The reward-model server a graph's params name (the runner builds it), if any."""
    return [params["reward_model"]] if params.get("reward_model") else []


def score_record(candidate: int, scores: Scores) -> dict[str, Any]:
    return {"candidate": candidate, "outcome": scores.outcome, "steps": list(scores.steps),
            "scorer": scores.scorer, "parsed_with": scores.parsed_with}


async def score_candidates(ctx: RunContext, scorer: Scorer, task: str, candidates: list[dict[str, Any]]
                           ) -> tuple[list[dict[str, Any]], bool]:
    """Score each candidate ({"index", "text"}); return (records, stopped by the budget)."""
    records: list[dict[str, Any]] = []
    seen: dict[str, Scores] = {}
    for candidate in candidates:
        scores = seen.get(candidate["text"])
        if scores is None:
            try:
                scores = await scorer.score(ctx, task, candidate["text"])
            except BudgetExceeded:
                return records, True
            seen[candidate["text"]] = scores
        record = score_record(candidate["index"], scores)
        ctx.emit(Score(candidate=candidate["index"], outcome=scores.outcome, steps=record["steps"],
                       scorer=scores.scorer, parsed_with=scores.parsed_with))
        records.append(record)
    return records, False
