"""Dataset-level sample allocation (in the spirit of Blend-ASC and PETS), and the plain
per-question adaptive rule, both over a pluggable sampler.

Not a registered graph: a runner over many questions that shares one total sample budget.

- `allocate`: every question first gets `initial` samples (round-robin one at a time when
  the budget cannot cover `initial` for all), then the next `batch` goes to the question
  whose majority is least settled: the lowest Beta posterior P(leader > runner-up)
  (tools.stopping.beta_posterior), ties to the question with fewer samples, then the
  earlier question. Questions at `threshold` or at `max_per_question` (or whose sampler
  ran dry) get nothing more (threshold 1.0: no question is ever settled, so every one
  is sampled up to its cap as far as the budget goes, i.e. SC@cap). It stops when the
  budget is spent or every question is settled or capped. Answers are the plain
  majority vote (tools.voting: ties go to the answer sampled first), exactly as
  self-consistency votes.
- `adaptive`: the adaptive-sc graph's rule (graphs.consistency.check) over a recorded
  list: batches of `batch_size` until the posterior reaches `threshold` or `max_n`.
- Samplers are async callables (question, n, first_index) -> answer keys (None: no
  readable answer). `recorded_sampler` serves recorded keys from the front of each
  question's list (offline replay, no model); `pool_sampler` asks a PoolModel;
  `allocate_runs` samples through refinegraph: one traced "self-consistency" run per
  question per batch (n = the batch, seed = params' seed + first_index so batches never
  repeat a server's samples), so every sample is in a trace with its vote; run ids are
  kept per question. A failed run gives no samples, and the question is capped there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from refinegraph.graphs.consistency import check
from refinegraph.tools.answers import get_projection
from refinegraph.tools.stopping import beta_posterior
from refinegraph.tools.voting import majority_vote

Sampler = Callable[[str, int, int], Awaitable[list[str | None]]]


def posterior_of(keys: Sequence[str | None]) -> float:
    """P(leader > runner-up) under the Beta rule; abstentions count toward no answer."""
    counts = majority_vote(keys).counts
    return beta_posterior(counts[0] if counts else 0, counts[1] if len(counts) > 1 else 0)


def winner_of(keys: Sequence[str | None]) -> str | None:
    """The majority answer (ties: the answer sampled first), None when nothing readable."""
    outcome = majority_vote(keys)
    return outcome.winner.key if outcome.winner else None


@dataclass
class QuestionResult:
    """One question's share of the budget and what its samples say."""

    question: str
    keys: list[str | None] = field(default_factory=list)
    answer: str | None = None
    counts: list[int] = field(default_factory=list)
    posterior: float = 0.0
    settled: bool = False
    exhausted: bool = False
    """The sampler returned fewer than asked (a recorded list ran out, or a run failed)."""
    run_ids: list[str] = field(default_factory=list)

    @property
    def used(self) -> int:
        return len(self.keys)

    def update(self, threshold: float) -> None:
        outcome = majority_vote(self.keys)
        self.answer = outcome.winner.key if outcome.winner else None
        self.counts = outcome.counts
        self.posterior = beta_posterior(self.counts[0] if self.counts else 0,
                                        self.counts[1] if len(self.counts) > 1 else 0)
        self.settled = threshold < 1.0 and self.posterior >= threshold

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "used": self.used, "posterior": round(self.posterior, 6)}


@dataclass
class AllocationResult:
    """Per question results (input order), the totals and why allocation stopped."""

    questions: list[QuestionResult]
    total_samples: int
    stop_reason: str
    steps: list[dict[str, Any]]
    """Each allocation decision after the initial round: question index, its samples and
    posterior when chosen, and how many it got."""

    @property
    def used(self) -> int:
        return sum(q.used for q in self.questions)

    @property
    def answers(self) -> list[str | None]:
        return [q.answer for q in self.questions]

    def as_dict(self) -> dict[str, Any]:
        return {"total_samples": self.total_samples, "used": self.used, "stop_reason": self.stop_reason,
                "settled": sum(q.settled for q in self.questions), "questions": [q.as_dict() for q in self.questions],
                "steps": self.steps}


async def allocate(questions: Sequence[str], *, total_samples: int, sampler: Sampler, initial: int = 2,
                   batch: int = 1, threshold: float = 0.95, max_per_question: int | None = 32) -> AllocationResult:
    """Spread `total_samples` over `questions` (see the module docstring); deterministic
    for a deterministic sampler."""
    if total_samples < 0 or initial < 0 or batch < 1 or not 0.5 < threshold <= 1.0:
        raise ValueError("need total_samples >= 0, initial >= 0, batch >= 1 and 0.5 < threshold <= 1")
    cap = max_per_question if max_per_question is not None else total_samples
    results = [QuestionResult(q) for q in questions]
    left = total_samples

    async def give(index: int, n: int) -> None:
        nonlocal left
        result = results[index]
        keys = list(await sampler(result.question, n, result.used))[:n]
        if len(keys) < n:
            result.exhausted = True
        result.keys += keys
        left -= len(keys)
        result.update(threshold)

    def open_(r: QuestionResult) -> bool:
        return not r.settled and not r.exhausted and r.used < cap

    first = min(initial, cap)
    if first * len(results) <= left:
        for i in range(len(results)):
            if first:
                await give(i, first)
    else:  # not enough for everyone's initial samples: deal them one at a time, in order
        for _ in range(first):
            for i, r in enumerate(results):
                if left > 0 and not r.exhausted:
                    await give(i, 1)
    steps: list[dict[str, Any]] = []
    while left > 0:
        candidates = [i for i, r in enumerate(results) if open_(r)]
        if not candidates:
            break
        chosen = min(candidates, key=lambda i: (results[i].posterior, results[i].used, i))
        r = results[chosen]
        n = min(batch, cap - r.used, left)
        steps.append({"question": chosen, "samples": r.used, "posterior": round(r.posterior, 6), "n": n})
        await give(chosen, n)
    if any(open_(r) for r in results):
        reason = "budget"
    elif all(r.settled for r in results):
        reason = "settled"
    else:
        reason = "capped"
    return AllocationResult(results, total_samples, reason, steps)


@dataclass(frozen=True)
class AdaptiveOutcome:
    """What the adaptive-sc rule does with one recorded list."""

    used: int
    answer: str | None
    posterior: float | None
    reason: str


def adaptive(keys: Sequence[str | None], *, batch_size: int = 2, threshold: float = 0.95,
             max_n: int | None = None, rule: str = "beta") -> AdaptiveOutcome:
    """The adaptive-sc graph's stopping rule replayed on recorded keys, in recorded order."""
    limit = min(max_n, len(keys)) if max_n is not None else len(keys)
    settings = {"rule": rule, "threshold": threshold, "n": limit, "batch_size": batch_size}
    taken = 0
    while True:
        taken = min(taken + batch_size, limit)
        event = check([{"answer": k} for k in keys[:taken]], settings)
        if event.stop or taken >= limit:
            reason = event.reason if event.stop else "max_n"
            return AdaptiveOutcome(taken, winner_of(keys[:taken]), event.posterior, reason)


def recorded_sampler(recorded: Mapping[str, Sequence[str | None]]) -> Sampler:
    """Serves each question's recorded keys from the front: [first_index, first_index + n)."""

    async def sample(question: str, n: int, first_index: int) -> list[str | None]:
        return list(recorded[question][first_index:first_index + n])

    return sample


def pool_sampler(pool: Any, kind: str) -> Sampler:
    """Asks a PoolModel (refinegraph.models.pool) for completions and projects them to
    `kind` answers; the pool serves each question's completions without replacement."""
    from refinegraph.models.pool import PoolError

    project = get_projection(kind)

    async def sample(question: str, n: int, first_index: int) -> list[str | None]:
        try:
            samples = await pool.sample([{"role": "user", "content": question}], n=n)
        except PoolError:
            return []
        return [project(text) for text in samples.texts]

    return sample


async def allocate_runs(questions: Sequence[str], *, total_samples: int, params: dict[str, Any] | None = None,
                        config: Any = None, models: dict[str, Any] | None = None, store: Any = None,
                        graph: str = "self-consistency", initial: int = 2, batch: int = 1, threshold: float = 0.95,
                        max_per_question: int | None = 32) -> AllocationResult:
    """`allocate` whose samples come from traced runs of `graph` (see the module docstring).

    `params` are the graph's (answer, temperature, max_tokens, seed); n is set per batch."""
    from refinegraph.runner import RunFailed, run

    base = dict(params or {})
    seed = int(base.pop("seed", 0))
    base.pop("n", None)
    run_ids: dict[str, list[str]] = {}

    async def sample(question: str, n: int, first_index: int) -> list[str | None]:
        try:
            result = await run(graph, question, config=config, params={**base, "n": n, "seed": seed + first_index},
                               models=models, store=store)
        except RunFailed as exc:
            run_ids.setdefault(question, []).append(exc.result.run_id)
            return []
        run_ids.setdefault(question, []).append(result.run_id)
        return [s["answer"] for s in result.state.get("samples", [])]

    outcome = await allocate(questions, total_samples=total_samples, sampler=sample, initial=initial, batch=batch,
                             threshold=threshold, max_per_question=max_per_question)
    for q in outcome.questions:
        q.run_ids = run_ids.get(q.question, [])
    return outcome


__all__ = ["AdaptiveOutcome", "AllocationResult", "QuestionResult", "Sampler", "adaptive", "allocate",
           "allocate_runs", "pool_sampler", "posterior_of", "recorded_sampler", "winner_of"]
