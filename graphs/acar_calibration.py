"""Calibrating ACAR's sigma cut-points (and its probes) to a cost target, from recorded outputs.

RouteLLM calibrates a router's threshold from data so that a chosen share of queries goes
to the strong model. ACAR's cut-points (0.3, 0.7) are fixed by its paper; this module fits
them, and which probe model and how many probes to use, for the best accuracy at a cost
target, from what the models said on recorded questions (a pool file, data/pools/).

ACAR is replayed offline, decision for decision, with the graph's own functions
(`sigma`, `choose_mode`, `combined_vote`, `majority_vote` of graphs/acar.py) and the pool
backend's serving order: the probes take the probe model's first completions; mode model k
takes the next unused completion of its model (a model that also probes continues after
its probes), as `refinegraph bench pool` runs ACAR with `judge=False` and
`mode_params={"n": 1}`. In mode "three" without a strict majority the judge is off, so
the combined vote decides (a pool holds no record for a judge's prompt). Cost is the pool
backend's estimate: ceil(chars/4) tokens for the prompt (the solver_cot prompt, once per
call) and for each completion, at each model's configured price per Mtok (tokens where a
model has no price).

Everything a question contributes that the cut-points do not change is computed once per
arm (probe model, probes, mode models) as a `Case`; a fit then scores every pair of
cut-points that separates the observed sigma values differently.

The cost target is a share of the reference cost: the default arm's probes plus all three
mode models on every question (ACAR's most expensive mode everywhere).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from refinegraph.config import Config
from refinegraph.graphs.acar import MODE_SIZES, choose_mode, combined_vote, sigma
from refinegraph.models.pool import PoolModel, estimate_tokens
from refinegraph.prompts import load_prompt
from refinegraph.tools.answers import get_projection
from refinegraph.tools.voting import majority_vote

FIXED_THRESHOLDS = (0.3, 0.7)
PROBE_COUNTS = (2, 3, 4, 5)


class CalibrationError(ValueError):
    """Recorded runs that cannot calibrate: no questions, unknown or unpriced models, too few samples."""


@dataclass(frozen=True)
class Arm:
    """One ACAR configuration besides its cut-points: the probe model, its probe count, the
    three mode models (cheapest first)."""

    probe_model: str
    probes: int
    models: tuple[str, str, str]

    def params(self, thresholds: Sequence[float]) -> dict[str, Any]:
        return {"probe_model": self.probe_model, "probes": self.probes, "models": list(self.models),
                "thresholds": [round(t, 6) for t in thresholds]}


@dataclass
class Case:
    """One question under one arm: what the probes and each mode model answered, and cost."""

    gold: str | None
    probe_answers: list[str | None]
    sigma: float
    probe_cost: float
    model_answers: list[str | None]
    model_costs: list[float]


@dataclass
class Point:
    """An arm at given cut-points on a set of questions."""

    arm: Arm
    thresholds: tuple[float, float]
    accuracy: float
    cost: float
    questions: int
    modes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "arm": asdict(self.arm)}


def acar_answer(case: Case, thresholds: Sequence[float]) -> tuple[str | None, float, str]:
    """(answer, cost, mode) of ACAR on one case, as graphs/acar.py decides with judge=False."""
    mode = choose_mode(case.sigma, thresholds)
    size = MODE_SIZES[mode]
    answers = case.model_answers[:size]
    cost = case.probe_cost + sum(case.model_costs[:size])
    if mode == "three":
        outcome = majority_vote(list(reversed(answers)))
        if outcome.winner and outcome.winner.votes * 2 > len(answers):
            return outcome.winner.key, cost, mode
        distinct = {a for a in answers if a is not None}
        if len(distinct) == 1:
            return distinct.pop(), cost, mode
    outcome = combined_vote(case.probe_answers, answers)
    return (outcome.winner.key if outcome.winner else None), cost, mode


def evaluate(arm: Arm, cases: Sequence[Case], thresholds: Sequence[float]) -> Point:
    correct, cost, modes = 0, 0.0, defaultdict(int)
    for case in cases:
        answer, spent, mode = acar_answer(case, thresholds)
        correct += answer is not None and answer == case.gold
        cost += spent
        modes[mode] += 1
    n = max(1, len(cases))
    return Point(arm, (float(thresholds[0]), float(thresholds[1])), correct / n, cost / n, len(cases), dict(modes))


def cut_point_grid(sigmas: Sequence[float]) -> list[tuple[float, float]]:
    """Every (low, high) that splits the observed sigma values differently: cut-points at 0,
    between neighbouring values, above the largest (when below 1), and 1."""
    values = sorted(set(sigmas))
    cuts = {0.0, 1.0} | {round((a + b) / 2, 6) for a, b in zip(values, values[1:])}
    if values and values[-1] < 1.0:
        cuts.add(round((values[-1] + 1.0) / 2, 6))
    ordered = sorted(cuts)
    return [(low, high) for low in ordered for high in ordered if low < high]


# -- recorded outputs -> cases ---------------------------------------------------------------


@dataclass
class Pricing:
    price_in: float | None
    price_out: float | None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.price_in is None or self.price_out is None:
            return float(prompt_tokens + completion_tokens)
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6


class PoolOutputs:
    """The recorded completions of a config's pool models, served as the pool backend serves them."""

    def __init__(self, config: Config, kind: str):
        self.config = config
        self.project = get_projection(kind)
        self.pools: dict[str, PoolModel] = {}
        self.prices: dict[str, Pricing] = {}
        for name, spec in config.models.items():
            if spec.backend == "pool" and spec.pool_file:
                self.pools[name] = PoolModel(name, spec.pool_file, spec.pool_sources, order=spec.pool_order,
                                             seed=spec.pool_seed)
                self.prices[name] = Pricing(spec.price_input_per_mtok, spec.price_output_per_mtok)

    def entries(self) -> list[dict[str, Any]]:
        """The questions every pool model answers, in file order (the first model's file)."""
        if not self.pools:
            raise CalibrationError("the config names no pool model (backend \"pool\" with a pool_file)")
        first = next(iter(self.pools.values()))
        entries = sorted(first.entries(), key=lambda e: _order_key(e.get("id", "")))
        return entries

    def completions(self, model: str, entry: dict[str, Any]) -> list[str]:
        if model not in self.pools:
            raise CalibrationError(f"model {model!r} is not a pool model of the config; pool models: "
                                   f"{', '.join(sorted(self.pools))}")
        return self.pools[model].completions(entry)

    def case(self, arm: Arm, entry: dict[str, Any]) -> Case | None:
        """The case of one question under `arm`; None when a model has too few completions."""
        prompt = prompt_tokens(entry["question"])
        served: dict[str, int] = defaultdict(int)

        def take(model: str, n: int) -> list[str] | None:
            texts = self.completions(model, entry)
            start = served[model]
            if start + n > len(texts):
                return None
            served[model] = start + n
            return texts[start:start + n]

        probe_texts = take(arm.probe_model, arm.probes)
        if probe_texts is None:
            return None
        probe_answers = [self.project(t) for t in probe_texts]
        probe_cost = self.prices[arm.probe_model].cost(prompt, sum(estimate_tokens(t) for t in probe_texts))
        answers, costs = [], []
        for model in arm.models:
            texts = take(model, 1)
            if texts is None:
                return None
            answers.append(self.project(texts[0]))
            costs.append(self.prices[model].cost(prompt, estimate_tokens(texts[0])))
        return Case(self.project(str(entry["gold"])), probe_answers, round(sigma(probe_answers), 6), probe_cost,
                    answers, costs)

    def single(self, model: str, entry: dict[str, Any]) -> tuple[bool, float]:
        """(correct, cost) of one model's first completion alone (greedy, one call)."""
        texts = self.completions(model, entry)
        prompt = prompt_tokens(entry["question"])
        text = texts[0] if texts else ""
        answer = self.project(text) if text else None
        return (answer is not None and answer == self.project(str(entry["gold"])),
                self.prices[model].cost(prompt, estimate_tokens(text)))


def prompt_tokens(question: str) -> int:
    """The pool backend's estimate of the probe's and mode models' prompt (solver_cot)."""
    return estimate_tokens("".join(m["content"] for m in load_prompt("solver_cot").render(task=question)))


def _order_key(identifier: str) -> tuple[str, int]:
    head, _, tail = identifier.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (identifier, 0)


def probe_arms(outputs: PoolOutputs, base: Arm, probe_models: Sequence[str], entries: Sequence[dict[str, Any]]
               ) -> list[Arm]:
    """The arms to consider: each probe model with each probe count its completions allow
    (at least 2 probes: one probe always has sigma 0), the base arm first."""
    arms = [base]
    for model in probe_models:
        fewest = min(len(outputs.completions(model, e)) for e in entries)
        reuse = sum(1 for m in base.models if m == model)
        for count in PROBE_COUNTS:
            arm = Arm(model, count, base.models)
            if count + reuse <= fewest and arm not in arms:
                arms.append(arm)
    return arms


def split_half(entries: Sequence[dict[str, Any]], seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded random half to fit on and the other half to report on."""
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return [entries[i] for i in sorted(order[:half])], [entries[i] for i in sorted(order[half:])]


def build_cases(outputs: PoolOutputs, arms: Sequence[Arm], entries: Sequence[dict[str, Any]]
                ) -> dict[Arm, list[Case]]:
    """Each arm's cases; an arm some question cannot serve is left out."""
    out = {}
    for arm in arms:
        cases = [outputs.case(arm, entry) for entry in entries]
        if all(c is not None for c in cases):
            out[arm] = cases  # type: ignore[assignment]
    return out


def reference_cost(cases: Sequence[Case]) -> float:
    """Mean cost of the arm's probes plus all three mode models on every question."""
    return sum(c.probe_cost + sum(c.model_costs) for c in cases) / max(1, len(cases))


@dataclass
class Fit:
    point: Point
    feasible: bool
    reference: float
    target: float
    considered: int


def fit(cases_by_arm: dict[Arm, list[Case]], target: float, reference: float) -> Fit:
    """The arm and cut-points of best accuracy whose mean cost is within target x reference
    (ties: the cheaper, then the earlier arm, then the lower cut-points). With none within
    the target, the cheapest point, marked infeasible."""
    if not cases_by_arm:
        raise CalibrationError("no arm could be evaluated on these questions")
    budget = target * reference
    best: Point | None = None
    cheapest: Point | None = None
    considered = 0
    for arm, cases in cases_by_arm.items():
        for thresholds in cut_point_grid([c.sigma for c in cases]):
            point = evaluate(arm, cases, thresholds)
            considered += 1
            if cheapest is None or point.cost < cheapest.cost - 1e-15:
                cheapest = point
            if point.cost <= budget + 1e-12 and (
                    best is None or point.accuracy > best.accuracy + 1e-12
                    or (abs(point.accuracy - best.accuracy) <= 1e-12 and point.cost < best.cost - 1e-15)):
                best = point
    chosen = best or cheapest
    assert chosen is not None
    return Fit(chosen, best is not None, reference, target, considered)


def snippet(fitted: Fit, config: Config, *, name: str = "acar-calibrated", source: str = "") -> str:
    """A config snippet (TOML): a pipeline running ACAR with the fitted arm and cut-points."""
    point = fitted.point
    params = point.arm.params(point.thresholds)
    inline = ", ".join(f"{key} = {json.dumps(value)}" for key, value in params.items())
    status = "within" if fitted.feasible else "NOT within (the cheapest point found)"
    lines = [f"# refinegraph route calibrate{': ' + source if source else ''}",
             f"# fitted on {point.questions} questions: accuracy {point.accuracy:.4f} at mean cost "
             f"{point.cost:.6g} per question, {status} the target {fitted.target:g} x reference {fitted.reference:.6g}",
             f"[pipelines.{name}]", 'graph = "acar"', f"params = {{{inline}}}"]
    return "\n".join(lines) + "\n"


def single_models(config: Config) -> list[str]:
    """The pool models that are one recorded model (one source): the single-model baselines."""
    return [name for name, spec in config.models.items()
            if spec.backend == "pool" and spec.pool_sources and len(spec.pool_sources) == 1]


def frontier(outputs: PoolOutputs, base: Arm, probe_models: Sequence[str], targets: Sequence[float], *,
             seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Calibrated ACAR at each cost target (fitted on one half, reported on the other), beside
    the fixed cut-points and each single model on the same reported half."""
    entries = outputs.entries()[:limit]
    fit_half, test_half = split_half(entries, seed)
    arms = probe_arms(outputs, base, probe_models, entries)
    fit_cases = build_cases(outputs, arms, fit_half)
    if base not in fit_cases:
        raise CalibrationError(f"the base arm {base} cannot be served on these questions")
    test_cases = build_cases(outputs, list(fit_cases), test_half)
    reference = reference_cost(fit_cases[base])
    test_reference = reference_cost(test_cases[base])
    calibrated = []
    for target in targets:
        fitted = fit(fit_cases, target, reference)
        reported = evaluate(fitted.point.arm, test_cases[fitted.point.arm], fitted.point.thresholds)
        calibrated.append({"target": target, "feasible": fitted.feasible, "fit": fitted.point.as_dict(),
                           "test": reported.as_dict(), "test_relative_cost": reported.cost / test_reference})
    fixed = evaluate(base, test_cases[base], FIXED_THRESHOLDS)
    singles = {}
    for model in single_models(outputs.config):
        on_fit = [outputs.single(model, e) for e in fit_half]
        on_test = [outputs.single(model, e) for e in test_half]
        singles[model] = {"fit_accuracy": sum(c for c, _ in on_fit) / len(on_fit),
                          "accuracy": sum(c for c, _ in on_test) / len(on_test),
                          "cost": sum(x for _, x in on_test) / len(on_test)}
        singles[model]["relative_cost"] = singles[model]["cost"] / test_reference
    strongest = max(singles, key=lambda m: (singles[m]["fit_accuracy"], -singles[m]["cost"])) if singles else None
    return {"questions": len(entries), "fit_questions": len(fit_half), "test_questions": len(test_half),
            "seed": seed, "base_arm": asdict(base), "arms": [asdict(a) for a in fit_cases],
            "reference_cost_fit": reference, "reference_cost_test": test_reference,
            "calibrated": calibrated,
            "fixed": {**fixed.as_dict(), "relative_cost": fixed.cost / test_reference},
            "singles": singles, "strongest_single": strongest}


__all__ = ["Arm", "CalibrationError", "Case", "FIXED_THRESHOLDS", "Fit", "Point", "PoolOutputs", "acar_answer",
           "build_cases", "cut_point_grid", "evaluate", "fit", "probe_arms", "reference_cost", "snippet",
           "frontier", "single_models", "split_half"]
