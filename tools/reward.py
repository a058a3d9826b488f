"""Reward scoring: one interface for outcome and step-wise scores.

Two scorers implement `Scorer.score(ctx, task, solution) -> Scores`:

- `JudgeScorer` (the default): an LLM judge (role "reward") that sees the task and the
  solution's numbered steps, and replies with structured JSON
  `{"steps": [0-10, ...], "score": 0-10}`; scores are divided by 10. An unparseable
  reply is a recorded `reward_unparseable` fallback and an unscored candidate
  (outcome None), which ranks below every scored one. The judge's prompt holds nothing
  of the generator's (no shared context: reward hacking).
- `RewardModelScorer`: a reward model served by vLLM (`vllm serve <model> --runner pooling`),
  used when a graph's `reward_model` param names a config entry of backend "reward" (its
  `base_url` and `model`; a trailing `/v1` is dropped). Request: `POST {root}/pooling`
  `{"model": <model>, "input": <task + solution>}`; response
  `{"data": [{"data": <output>}], "usage": {"prompt_tokens": ...}}`. How `<output>` is read:

  * a number or `[x]`: a sequence reward (logit) -> outcome `sigmoid(x)` (`transform="identity"`
    for models that already give [0, 1]);
  * rows of two `[[neg, pos], ...]`: a process reward model's step classification
    (vLLM STEP pooling, e.g. Qwen2.5-Math-PRM; put `step_separator` between steps) ->
    steps = P(pos) of each row (softmaxed when a row does not sum to 1), outcome = min(steps);
  * rows of one `[[x], [y], ...]` or a flat list longer than one: per-token rewards
    (ALL pooling) -> outcome = transform(last).

  The server is a model of backend "reward" (refinegraph.models.reward_server), called
  through the run's choke point, so every request is an `llm_call` event (role "reward")
  and a replay serves it from the trace. A dead or slow server (timeout, connection
  refused, 5xx after the model's retry policy) is a recorded `reward_model_error`
  fallback and an unscored candidate, never a hang.

`best_index` is the one selection rule: highest outcome, earliest on ties, unscored lose.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, field_validator

from refinegraph.context import RunContext
from refinegraph.models.base import ModelError
from refinegraph.prompts import load_prompt
from refinegraph.prompts.conversation import answer_text, task_text
from refinegraph.tools.structured import response_format_for, sample_structured

MAX_STEPS = 12
"""Steps shown to a judge or reviewer; longer solutions are grouped into this many."""


@dataclass
class Scores:
    """A solution's reward: outcome in [0, 1] (None = unscored) and one score per step."""

    outcome: float | None
    steps: list[float] = field(default_factory=list)
    parsed_with: str = ""
    scorer: str = ""


class Scorer(Protocol):
    """Anything that scores a solution to a task through the run's context."""

    name: str

    async def score(self, ctx: RunContext, task: str, solution: str) -> Scores: ...


def best_index(outcomes: Sequence[float | None]) -> int | None:
    """The candidate to choose: highest outcome, earliest on ties; unscored (None) lose;
    None when no candidate is scored."""
    best: int | None = None
    for index, outcome in enumerate(outcomes):
        if outcome is None:
            continue
        if best is None or outcome > outcomes[best]:  # type: ignore[operator]
            best = index
    return best


def split_steps(solution: str, max_steps: int = MAX_STEPS) -> list[str]:
    """A solution's steps: its non-empty lines, grouped evenly into at most `max_steps`."""
    lines = [line.strip() for line in solution.splitlines() if line.strip()]
    if len(lines) <= max_steps:
        return lines
    size = math.ceil(len(lines) / max_steps)
    return [" ".join(lines[i:i + size]) for i in range(0, len(lines), size)]


def numbered_steps(steps: Sequence[str], scores: Sequence[float] | None = None) -> str:
    """Steps as "Step 1: ..." lines, each with its score when scores are given."""
    out = []
    for i, step in enumerate(steps):
        if scores is None:
            out.append(f"Step {i + 1}: {step}")
        else:
            mark = f"{scores[i]:.2f}" if i < len(scores) else "not scored"
            out.append(f"Step {i + 1} [score {mark}]: {step}")
    return "\n".join(out) or "(empty solution)"


# -- LLM judge ------------------------------------------------------------------------------


def _clamp10(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) or (isinstance(value, str) and _is_number(value)):
        return min(10.0, max(0.0, float(value)))
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class JudgeReply(BaseModel):
    """What the reward judge must return; scores outside 0..10 are clamped."""

    steps: list[float] = Field(default_factory=list, max_length=MAX_STEPS)
    score: float = Field(ge=0, le=10)

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, value: Any) -> Any:
        return _clamp10(value)

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for item in value[:MAX_STEPS]:
            out.append(_clamp10(item.get("score") if isinstance(item, dict) else item))
        return out


JUDGE_FORMAT = response_format_for(JudgeReply, "reward_scores")
MIN_JUDGE_TOKENS = 24
"""A reply shorter than this cannot hold the JSON: the budget refuses such a call."""


@dataclass
class JudgeScorer:
    """LLM-as-judge reward (role "reward"), temperature 0."""

    seed: int = 0
    max_tokens: int = 160
    role: str = "reward"
    name: str = "judge"

    async def score(self, ctx: RunContext, task: str, solution: str) -> Scores:
        label = f"judge:{ctx.model_name(self.role)}"
        steps = split_steps(answer_text(solution))  # a tool call spelled out, not its encoding
        messages = load_prompt("reward").render(task=task_text(task, None, ctx.tools), steps=numbered_steps(steps),
                                                count=len(steps))
        asked = await sample_structured(ctx, self.role, messages, JudgeReply, response_format=JUDGE_FORMAT,
                                        max_tokens=self.max_tokens, seed=self.seed, min_tokens=MIN_JUDGE_TOKENS)
        parsed, parsed_with = asked.value, asked.parsed_with
        if parsed is None:
            ctx.fallback("reward_unparseable", f"no valid scores in the reward judge's reply: {asked.error}",
                         asked.reply)
            return Scores(outcome=None, steps=[], parsed_with="fallback", scorer=label)
        return Scores(outcome=round(parsed.score / 10, 6), steps=[round(s / 10, 6) for s in parsed.steps],
                      parsed_with=parsed_with, scorer=label)


# -- reward-model server --------------------------------------------------------------------


class RewardOutputError(ValueError):
    """A pooling output none of the documented shapes fits."""


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RewardOutputError(f"not a number: {value!r}")
    return float(value)


def read_pooling_output(output: Any, transform: Literal["sigmoid", "identity"] = "sigmoid"
                        ) -> tuple[float, list[float]]:
    """(outcome, steps) from one pooling output (shapes in the module docstring)."""

    def squash(x: float) -> float:
        return min(1.0, max(0.0, _sigmoid(x) if transform == "sigmoid" else x))

    if isinstance(output, (int, float)) and not isinstance(output, bool):
        return squash(_number(output)), []
    if not isinstance(output, list) or not output:
        raise RewardOutputError(f"unexpected pooling output: {str(output)[:200]}")
    if all(isinstance(row, list) for row in output):
        widths = {len(row) for row in output}
        if widths == {2}:
            steps = []
            for neg, pos in ([_number(a), _number(b)] for a, b in output):
                if abs(neg + pos - 1) > 1e-3 or min(neg, pos) < 0:
                    top = max(neg, pos)
                    neg, pos = math.exp(neg - top), math.exp(pos - top)
                    neg, pos = neg / (neg + pos), pos / (neg + pos)
                steps.append(round(pos, 6))
            return min(steps), steps
        if widths == {1}:
            return squash(_number(output[-1][0])), []
        raise RewardOutputError(f"pooling rows of widths {sorted(widths)}: not a reward output")
    return squash(_number(output[-1])), []


@dataclass
class RewardModelScorer:
    """A reward model served behind vLLM's `/pooling` endpoint: config entry `model_name`
    with backend "reward" (refinegraph.models.reward_server). Its requests go through the
    run's choke point (role "reward" bound to that model), so budget, retries, the
    `llm_call` event and replay are the same as for any model call."""

    model_name: str
    step_separator: str | None = None
    transform: Literal["sigmoid", "identity"] = "sigmoid"

    @property
    def name(self) -> str:
        return f"reward_model:{self.model_name}"

    def render(self, task: str, solution: str) -> str:
        steps = split_steps(solution) if self.step_separator is not None else []
        body = self.step_separator.join(steps) + self.step_separator if steps else solution  # type: ignore[operator]
        return f"{task}\n\n{body}"

    async def score(self, ctx: RunContext, task: str, solution: str) -> Scores:
        messages = [{"role": "user", "content": self.render(task, solution)}]
        try:
            with ctx.playing(self.model_name, "reward"):
                samples = await ctx.sample("reward", messages, max_tokens=1, min_tokens=0)
        except ModelError as exc:
            ctx.fallback("reward_model_error", f"{self.name}: {exc}")
            return Scores(outcome=None, parsed_with="fallback", scorer=self.name)
        raw = samples.texts[0]
        try:
            outcome, steps = read_pooling_output(json.loads(raw), self.transform)
        except (RewardOutputError, TypeError, ValueError) as exc:
            ctx.fallback("reward_model_unparseable", f"{self.name}: {exc}", raw)
            return Scores(outcome=None, parsed_with="fallback", scorer=self.name)
        return Scores(outcome=round(outcome, 6), steps=steps, parsed_with="reward_model", scorer=self.name)




# -- step-level search ----------------------------------------------------------------------


def join_steps(steps: Sequence[str]) -> str:
    """A partial solution as the scorers read it: one line per step (a step's own line
    breaks become spaces), so `split_steps` gives back exactly these steps."""
    return "\n".join(" ".join(step.split()) for step in steps)


def step_reward(scores: Scores, aggregate: Literal["last", "min", "outcome"] = "last") -> float | None:
    """The reward of a partial solution: its last step's score (search-and-learn's default),
    the lowest step score, or the outcome; the outcome when no step was scored; None unscored."""
    if scores.outcome is None and not scores.steps:
        return None
    if aggregate == "outcome" or not scores.steps:
        return scores.outcome
    return scores.steps[-1] if aggregate == "last" else min(scores.steps)


__all__ = ["JudgeReply", "JudgeScorer", "MAX_STEPS", "RewardModelScorer", "RewardOutputError", "Scorer", "Scores",
           "best_index", "join_steps", "numbered_steps", "read_pooling_output", "split_steps", "step_reward"]
