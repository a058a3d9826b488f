"""Step-level search with a process reward: beam search, DVTS and particle filtering.

A solution grows one step at a time (agents.stepper: a step ends at a blank line or a line
break, param `step_delimiter`); after each step every new partial solution is scored by the
reward scorer (tools.reward: a process reward model behind vLLM's /pooling when
`reward_model` names one, else the LLM judge scoring the partial solution) and its step
reward is its last step's score (`aggregate`: "last", "min" or "outcome"). Unscored
partial solutions rank below every scored one and weigh 0.

- beam-search (search-and-learn, Beeching et al. 2024): `n` beams. The empty solution
  expands `n` first steps; then each surviving beam expands `beam_width` next steps, and
  the best `n // beam_width` open ones survive (ties: the earliest). Complete solutions
  are set aside for the final selection.
- dvts (diverse verifier tree search, same source): `n // beam_width` independent
  subtrees, one first step each; each subtree's beam expands `beam_width` next steps and
  keeps only its best (greedy), until it completes.
- particle-filter (Puri et al. 2025, its_hub): `n` particles, each extended by one step
  per iteration (complete ones wait), then resampled: `n` draws with replacement, each
  particle drawn with probability softmax(reward / `softmax_temperature`) (uniform when
  none is scored), from a generator seeded by (`seed`, iteration), so a replay resamples
  alike. Weak partial solutions keep a chance.

Every loop stops at `max_steps` iterations. Final answer (`selection`): "weighted" sums
the step rewards of the final candidates per distinct answer (a `vote` event with the
weights), "best" takes the best-rewarded candidate. Each expansion is an `expand` event,
each score a `score` event, each pruning or resampling a `prune` event, the choice a
`stop`; identical partial solutions are expanded in one request and scored once, one
after another, so a replay (zero model calls) makes the same decisions. A refused call
(budget) ends the search with the candidates so far, stop reason "budget".

Input: {"task": str}. Output adds answer, solution (the chosen candidate's steps, one per
paragraph), chosen (its id), score, stop_reason.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal, TypedDict

from langgraph.runtime import Runtime
from pydantic import Field, model_validator

from refinegraph.agents.scorer import make_scorer, reward_models, score_candidates
from refinegraph.agents.stepper import STEP_EVENT_CHARS, StepDelimiter, next_steps
from refinegraph.budget import BudgetExceeded
from refinegraph.context import RunContext
from refinegraph.events import Expand, Prune, Stop, Vote
from refinegraph.graphs.best_of_n import ScorerParams
from refinegraph.registry import register_graph
from refinegraph.tools.answers import display, get_projection
from refinegraph.tools.reward import MAX_STEPS, Scores, join_steps, step_reward
from refinegraph.tools.voting import majority_vote
from refinegraph.wiring import MethodGraph

Algorithm = Literal["beam-search", "dvts", "particle-filter"]


class StepSearchParams(ScorerParams):
    n: int = Field(4, ge=1, le=64)
    """Beams (beam search, DVTS) or particles."""
    beam_width: int = Field(2, ge=1, le=16)
    """Beam search: children per beam, and n // beam_width beams survive; DVTS: children per subtree step."""
    max_steps: int = Field(6, ge=1, le=MAX_STEPS)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    step_delimiter: StepDelimiter = "paragraph"
    max_tokens: int = Field(160, ge=8)
    """Per step."""
    aggregate: Literal["last", "min", "outcome"] = "last"
    selection: Literal["weighted", "best"] = "weighted"
    softmax_temperature: float = Field(1.0, gt=0.0)
    """Particle filter: the temperature of the resampling softmax over rewards."""

    @classmethod
    def schema_rules(cls, defaults: dict[str, Any]) -> list[dict[str, Any]]:
        """beam_width <= n below as JSON Schema (the server's OpenAPI document): for each
        width, the least n; `defaults` stand for a field the request leaves out."""
        widest = next(m.le for m in cls.model_fields["beam_width"].metadata if getattr(m, "le", None) is not None)
        cases = []
        for width in [None, *range(1, widest + 1)]:
            least = defaults["beam_width"] if width is None else width
            case: dict[str, Any] = {"properties": {"n": {"minimum": least}}, "required": []}
            if width is None:
                case["not"] = {"required": ["beam_width"]}
            else:
                case["properties"]["beam_width"] = {"const": width}
                case["required"].append("beam_width")
            if defaults["n"] < least:
                case["required"].append("n")
            cases.append(case)
        return [{"anyOf": cases}]

    @model_validator(mode="after")
    def _width(self) -> StepSearchParams:
        if self.beam_width > self.n:
            raise ValueError(f"beam_width ({self.beam_width}) cannot exceed n ({self.n})")
        return self


class SearchState(TypedDict, total=False):
    task: str
    params: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    """Every partial solution by id: parent, steps, complete, reward, subtree."""
    active: list[int]
    """What goes on (particle filter: the particles, an id once per copy)."""
    finished: list[int]
    iteration: int
    next_id: int
    stop_reason: str
    answer: str | None
    solution: str | None
    chosen: int | None
    score: float | None


def rank_key(node: dict[str, Any]) -> tuple[float, int]:
    """Best first: higher reward, then earlier id; unscored last."""
    reward = node["reward"]
    return (-(reward if reward is not None else -math.inf), node["id"])


def resampling_weights(rewards: list[float | None], temperature: float) -> list[float]:
    """softmax(reward / temperature); unscored weigh 0; uniform when none is scored."""
    scored = [r for r in rewards if r is not None]
    if not scored:
        return [1 / len(rewards)] * len(rewards)
    top = max(scored) / temperature
    raw = [math.exp(r / temperature - top) if r is not None else 0.0 for r in rewards]
    total = sum(raw)
    return [w / total for w in raw]


def resample(weights: list[float], seed: int, iteration: int) -> list[int]:
    """len(weights) draws with replacement, in proportion to the weights (seeded, reproducible)."""
    rng = random.Random(f"{seed}:{iteration}")
    return rng.choices(range(len(weights)), weights=weights, k=len(weights))


class Search:
    """One run's search: the nodes, and growing and scoring them through the context."""

    def __init__(self, ctx: RunContext, settings: dict[str, Any], state: SearchState):
        self.ctx = ctx
        self.settings = settings
        self.task = state["task"]
        self.nodes = {int(k): dict(v) for k, v in state["nodes"].items()}
        self.next_id = state["next_id"]
        self.iteration = state["iteration"]

    async def grow(self, parents: list[int], per_parent: int) -> list[int]:
        """Each parent (repeats allowed) extended by `per_parent` steps; identical partial
        solutions share one request. The children's ids, in parent order."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for parent in parents:
            groups.setdefault(tuple(self.nodes[parent]["steps"]), []).append(parent)
        children_of: dict[int, list[int]] = {}
        for steps, members in groups.items():
            s = self.settings
            drawn = await next_steps(self.ctx, self.task, list(steps), per_parent * len(members),
                                     temperature=s["temperature"], max_tokens=s["max_tokens"],
                                     seed=s["seed"] + self.iteration, delimiter=s["step_delimiter"])
            for position, parent in enumerate(members):
                mine = drawn[position * per_parent:(position + 1) * per_parent]
                ids = []
                for step, complete in mine:
                    node = {"id": self.next_id, "parent": parent, "steps": [*steps, step] if step else list(steps),
                            "complete": complete, "reward": None, "subtree": self.nodes[parent]["subtree"]}
                    self.nodes[self.next_id] = node
                    ids.append(self.next_id)
                    self.next_id += 1
                children_of.setdefault(parent, []).extend(ids)
                self.ctx.emit(Expand(iteration=self.iteration, parent=parent, children=ids,
                                     steps=[step[:STEP_EVENT_CHARS] for step, _ in mine],
                                     complete=[complete for _, complete in mine]))
        return [child for parent in dict.fromkeys(parents) for child in children_of[parent]]

    async def score(self, ids: list[int]) -> bool:
        """Rewards for `ids` (a `score` event each); True when the budget stopped the scoring."""
        candidates = [{"index": i, "text": join_steps(self.nodes[i]["steps"])} for i in ids]
        records, stopped = await score_candidates(self.ctx, make_scorer(self.ctx, self.settings), self.task,
                                                  candidates)
        for record in records:
            scores = Scores(outcome=record["outcome"], steps=record["steps"])
            self.nodes[record["candidate"]]["reward"] = step_reward(scores, self.settings["aggregate"])
        return stopped

    def scores_of(self, ids: list[int]) -> dict[str, float | None]:
        return {str(i): self.nodes[i]["reward"] for i in dict.fromkeys(ids)}

    def update(self, **extra: Any) -> dict[str, Any]:
        return {"nodes": {str(k): v for k, v in self.nodes.items()}, "next_id": self.next_id,
                "iteration": self.iteration + 1, **extra}


async def beam_step(search: Search, state: SearchState) -> dict[str, Any]:
    s = search.settings
    first = search.iteration == 0
    children = await search.grow([0] if first else state["active"], s["n"] if first else s["beam_width"])
    if await search.score(children):
        return search.update(stop_reason="budget")
    finished = [c for c in children if search.nodes[c]["complete"]]
    open_ = sorted((search.nodes[c] for c in children if not search.nodes[c]["complete"]), key=rank_key)
    keep = max(1, s["n"] // s["beam_width"])
    kept, pruned = [n["id"] for n in open_[:keep]], [n["id"] for n in open_[keep:]]
    search.ctx.emit(Prune(iteration=search.iteration, algorithm="beam-search", rule="top_k",
                          scores=search.scores_of(children), kept=kept, pruned=pruned, finished=finished))
    return search.update(active=kept, finished=state["finished"] + finished)


async def dvts_step(search: Search, state: SearchState) -> dict[str, Any]:
    s = search.settings
    if search.iteration == 0:
        subtrees = max(1, s["n"] // s["beam_width"])
        children = await search.grow([0], subtrees)
        for position, child in enumerate(children):
            search.nodes[child]["subtree"] = position
    else:
        children = await search.grow(state["active"], s["beam_width"])
    if await search.score(children):
        return search.update(stop_reason="budget")
    best: dict[int, dict[str, Any]] = {}
    for child in children:
        node = search.nodes[child]
        if node["subtree"] not in best or rank_key(node) < rank_key(best[node["subtree"]]):
            best[node["subtree"]] = node
    winners = {n["id"] for n in best.values()}
    finished = [c for c in children if c in winners and search.nodes[c]["complete"]]
    kept = [c for c in children if c in winners and not search.nodes[c]["complete"]]
    pruned = [c for c in children if c not in winners]
    search.ctx.emit(Prune(iteration=search.iteration, algorithm="dvts", rule="best_per_subtree",
                          scores=search.scores_of(children), kept=kept, pruned=pruned, finished=finished))
    return search.update(active=kept, finished=state["finished"] + finished)


async def particle_step(search: Search, state: SearchState) -> dict[str, Any]:
    s = search.settings
    if search.iteration == 0:
        particles = await search.grow([0], s["n"])
        fresh = particles
    else:
        growing = [p for p in state["active"] if not search.nodes[p]["complete"]]
        grown = iter(await search.grow(growing, 1))
        particles = [p if search.nodes[p]["complete"] else next(grown) for p in state["active"]]
        fresh = [p for p in particles if p not in state["active"]]
    if await search.score(list(dict.fromkeys(fresh))):
        return search.update(stop_reason="budget")
    done = all(search.nodes[p]["complete"] for p in particles)
    if done or search.iteration + 1 >= s["max_steps"]:
        return search.update(active=particles)
    weights = resampling_weights([search.nodes[p]["reward"] for p in particles], s["softmax_temperature"])
    drawn = [particles[i] for i in resample(weights, s["seed"], search.iteration)]
    search.ctx.emit(Prune(iteration=search.iteration, algorithm="particle-filter", rule="resample",
                          scores=search.scores_of(particles), kept=drawn,
                          pruned=[p for p in dict.fromkeys(particles) if p not in drawn],
                          weights=[round(w, 6) for w in weights]))
    return search.update(active=drawn)


STEPS = {"beam-search": beam_step, "dvts": dvts_step, "particle-filter": particle_step}


def final_candidates(algorithm: Algorithm, state: SearchState) -> list[int]:
    """Particle filter: the final particles (copies count); otherwise the complete solutions,
    then the open beams the step cap left."""
    if algorithm == "particle-filter":
        return list(state.get("active", []))
    return list(state.get("finished", [])) + list(state.get("active", []))


def build(algorithm: Algorithm):
    def build_search(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
        settings = StepSearchParams.model_validate(params or {}).model_dump()
        project = get_projection(settings["answer"])
        root = {"id": 0, "parent": None, "steps": [], "complete": False, "reward": None, "subtree": 0}
        initial = {"nodes": {"0": root}, "active": [], "finished": [], "iteration": 0, "next_id": 1}

        async def step(state: SearchState, runtime: Runtime[RunContext]) -> dict[str, Any]:
            search = Search(runtime.context, settings, state)
            try:
                return await STEPS[algorithm](search, state)
            except BudgetExceeded:  # the expansion was refused: the candidates so far stand
                return {"stop_reason": "budget"}

        async def finish(state: SearchState, runtime: Runtime[RunContext]) -> dict[str, Any]:
            ctx = runtime.context
            nodes = {int(k): v for k, v in state["nodes"].items()}
            candidates = final_candidates(algorithm, state)
            reason = state.get("stop_reason") or "done"
            answers = [project(join_steps(nodes[c]["steps"])) for c in candidates]
            rewards = [nodes[c]["reward"] for c in candidates]
            chosen: int | None = None
            if settings["selection"] == "weighted" and candidates:
                outcome = majority_vote(answers, [r if r is not None else 0.0 for r in rewards])
                ctx.emit(Vote(**outcome.as_event()))
                if outcome.winner is not None:
                    chosen = min((candidates[i] for i in outcome.winner.members), key=lambda c: rank_key(nodes[c]))
            if chosen is None and candidates:  # "best", or a weighted vote with no readable answer
                chosen = min(candidates, key=lambda c: rank_key(nodes[c]))
            score = nodes[chosen]["reward"] if chosen is not None else None
            ctx.emit(Stop(reason=reason, chosen=chosen, score=score))
            if chosen is None:
                return {"answer": None, "solution": None, "chosen": None, "score": None, "stop_reason": reason}
            key = project(join_steps(nodes[chosen]["steps"]))
            solution = "\n\n".join(nodes[chosen]["steps"])
            return {"answer": display(key, settings["answer"]) if key is not None else solution, "solution": solution,
                    "chosen": chosen, "score": score, "stop_reason": reason}

        def after_step(state: SearchState) -> str:
            if state.get("stop_reason") or not state.get("active") or state["iteration"] >= settings["max_steps"]:
                return "finish"
            if algorithm == "particle-filter" and all(state["nodes"][str(p)]["complete"] for p in state["active"]):
                return "finish"
            return "step"

        graph = MethodGraph(SearchState, settings, start=initial)
        graph.node("step", step)
        graph.node("finish", finish)
        graph.branch("step", after_step, ["step", "finish"])
        return graph.compile(checkpointer, name=algorithm)

    return build_search


build_beam_search = build("beam-search")
build_dvts = build("dvts")
build_particle_filter = build("particle-filter")


SEARCH_OUTPUTS = ("solution", "chosen", "score")


def register() -> None:
    register_graph("beam-search", build_beam_search,
                   "Step-level beam search: n beams, each step scored by a process reward; the best n/M survive",
                   params=StepSearchParams, sets=SEARCH_OUTPUTS, uses_models=reward_models)
    register_graph("dvts", build_dvts,
                   "Diverse verifier tree search: n/M independent subtrees, each greedy on step rewards",
                   params=StepSearchParams, sets=SEARCH_OUTPUTS, uses_models=reward_models)
    register_graph("particle-filter", build_particle_filter,
                   "Particle filtering: n particles resampled each step in proportion to softmax(step reward)",
                   params=StepSearchParams, sets=SEARCH_OUTPUTS, uses_models=reward_models)


register()
