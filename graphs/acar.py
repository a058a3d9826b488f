"""ACAR: sigma-routing across models.

`probes` samples from a cheap probe model (or, with `probe_models`, from several models in
turn: mixed probes); sigma = (distinct answers - 1) / (N - 1), where
every unreadable answer (None) counts as a distinct answer of its own (an unreadable
probe is disagreement, not agreement); N = 1 gives sigma 0. The mode:

- sigma < low (0.3): "one": the probes' majority answer (ties: the answer sampled first);
  no further call;
- low <= sigma < high (0.7): "two": the first two models (cheapest first: `order="price"`
  sorts the models by their configured price, the default; `order="given"` keeps the list) each run the
  mode graph; the answer is a vote over both models' answers and the probes' answers;
- sigma >= high: "three": all three models run it; a strict majority of their answers
  wins; otherwise a judge (role "judge") chooses among their distinct answers, and an
  unreadable judge reply or a failing judge model falls back (recorded) to the vote.

The vote orders its voters strongest model first, then the probes in sample order
(Vote `members` index that list), and ties go to the earliest voter: a tie goes to the
strongest model's answer, and the probes only break ties between answers no model gave.

Each mode model runs `mode_graph` (any registered graph taking {"task"} and a `seed`
param: self-consistency, self-refine, sets...) as a nested LangGraph invocation inside the
`mode` node, one model per node step (sequential: the trace's order is fixed for replay),
with every role of the nested graph played by that model (RunContext.playing). Model k
(0-based) gets seed `mode_params["seed"] + k`, or `seed + probes + k` when mode_params
names none, so the same model listed twice samples independently, and apart from the
probes. The nested graph inherits the run's checkpointer (LangGraph's default for a
graph called inside a node: each call checkpoints under its own namespace).

A refused call (budget) anywhere ends the run with the best answer so far: the vote over
the probes and the model answers obtained (the probes' majority if nothing else), stop
reason "budget". Route events: phase "decided" when the mode is chosen, phase "final"
with each model's answer (keys: model name, "name#2" for a repeat), tokens and cost of
the whole run, and the winner.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypedDict

from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from refinegraph.agents.judge import judge_answers
from refinegraph.agents.sampler import sample_answers
from refinegraph.budget import BudgetExceeded
from refinegraph.context import RunContext
from refinegraph.events import Route, Stop, Vote
from refinegraph.registry import MODEL_NAME, get_graph, list_graphs, register_graph
from refinegraph.tools.answers import AnswerKind, display, get_projection
from refinegraph.tools.voting import VoteOutcome, majority_vote
from refinegraph.wiring import MethodGraph

MODE_ROLES = ("model1", "model2", "model3")
MODE_SIZES = {"one": 0, "two": 2, "three": 3}


class ACARParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probe_model: str | None = Field(None, json_schema_extra={MODEL_NAME: True})
    """None: the model playing role "probe" (the default role's model when none is named)."""
    probe_models: list[str] | None = Field(None, min_length=1, json_schema_extra={MODEL_NAME: True})
    """Mixed probes: probe i is sampled from probe_models[i % len] (models of different
    families, or one model under different prompts' configs), so that cheap probes that
    agree because they share a blind spot are fewer; overrides probe_model."""
    models: list[str] | None = Field(None, min_length=1, max_length=3, json_schema_extra={MODEL_NAME: True})
    """The modes' models; fewer than three are padded with the last one. None: roles
    model1, model2, model3 (each the default model when not named)."""
    order: Literal["price", "given"] = "price"
    """price: the modes' models sorted cheapest first by their configured price per Mtok
    (input + output; an unpriced model after the priced ones, ties in the given order);
    given: as listed."""
    probes: int = Field(3, ge=1, le=64)
    probe_temperature: float = Field(0.7, ge=0.0, le=2.0)
    seed: int = 0
    thresholds: list[float] = Field(default_factory=lambda: [0.3, 0.7])
    mode_graph: str = "self-consistency"
    mode_params: dict[str, Any] = Field(default_factory=lambda: {"n": 1})
    judge: bool = True
    judge_max_tokens: int = Field(128, ge=16)
    max_tokens: int = Field(256, ge=8)
    """The probes' max_tokens (the mode graph takes its own in mode_params)."""
    answer: AnswerKind = "number"

    @field_validator("thresholds")
    @classmethod
    def _cut_points(cls, value: list[float]) -> list[float]:
        """Two cut points of sigma in [0, 1], taken in either order ([0.7, 0.3] is [0.3, 0.7]);
        equal ones leave no middle mode. Any such pair is valid, so JSON Schema states it all."""
        if len(value) != 2 or not all(0.0 <= v <= 1.0 for v in value):
            raise ValueError(f"thresholds must be two cut points in [0, 1], got {value}")
        return sorted(value)

    @classmethod
    def schema_rules(cls, defaults: dict[str, Any]) -> list[dict[str, Any]]:
        """What JSON Schema says of the checks below (the server's OpenAPI document): the
        mode graph is one of mode_graphs(); the thresholds are two numbers in [0, 1];
        mode_params as {} (the mode graph's own params are taken too, checked by its model:
        one branch per graph made the document too large for schemathesis to generate from).
        Not said there: model names come from the config."""
        cut = {"type": "number", "minimum": 0.0, "maximum": 1.0}
        return [{"properties": {
            "mode_graph": {"enum": mode_graphs()},
            "thresholds": {"type": "array", "items": cut, "minItems": 2, "maxItems": 2},
            "mode_params": {"type": "object", "maxProperties": 0, "description": (
                "stated here as {}; the mode graph's own params are taken too, checked by its model")}}}]

    @model_validator(mode="after")
    def _mode_graph(self) -> ACARParams:
        if self.mode_graph == "acar":
            raise ValueError("mode_graph cannot be acar itself")
        if self.mode_graph not in mode_graphs():
            raise ValueError(f"mode_graph {self.mode_graph!r} is not a graph that answers a task alone; "
                             f"these are: {', '.join(mode_graphs())}")
        if "mode_params" not in self.model_fields_set:  # the default ({"n": 1}) is self-consistency's;
            # another mode graph takes what of it it has
            taken = get_graph(self.mode_graph).params.model_fields
            self.mode_params = {k: v for k, v in self.mode_params.items() if k in taken}
        return self


def mode_graphs() -> list[str]:
    """The graphs a mode may run: every registered one that answers a task with nothing
    else (not a SQL graph, which needs a database; not code-filter, which needs tests), but ACAR."""
    return [g.name for g in list_graphs() if g.name != "acar" and g.input_key == "task" and not g.reads]


def sigma(answers: Sequence[str | None]) -> float:
    """Disagreement of probe answers: (distinct - 1) / (N - 1); each None is its own answer."""
    n = len(answers)
    if n <= 1:
        return 0.0
    readable = {a for a in answers if a is not None}
    distinct = len(readable) + sum(1 for a in answers if a is None)
    return (distinct - 1) / (n - 1)


def choose_mode(value: float, thresholds: Sequence[float]) -> str:
    """"one" below the low cut-point, "two" from low up to (not including) high, else "three"."""
    low, high = thresholds
    if value < low:
        return "one"
    if value < high:
        return "two"
    return "three"


def mode_models(settings: dict[str, Any], resolve: Any, config: Any = None) -> list[str]:
    """The three mode models, cheapest first when `order` is "price" (prices from `config`);
    `resolve(role)` names a role's model."""
    names = list(settings["models"]) if settings["models"] else [resolve(role) for role in MODE_ROLES]
    if settings.get("order", "price") == "price" and config is not None:
        names = sorted(names, key=lambda name: model_price(config, name))
    return (names + [names[-1]] * 3)[:3]


def model_price(config: Any, name: str) -> float:
    """A model's configured price per Mtok, input plus output; unpriced (or unknown): +inf."""
    spec = config.models.get(name)
    if spec is None or spec.price_input_per_mtok is None and spec.price_output_per_mtok is None:
        return math.inf
    return (spec.price_input_per_mtok or 0.0) + (spec.price_output_per_mtok or 0.0)


def probe_plan(settings: dict[str, Any], probe_model: str) -> list[tuple[str, int]]:
    """(model, samples) per probe model, in order: probe i comes from probe_models[i % len]."""
    models = settings.get("probe_models") or [probe_model]
    counts = [sum(1 for i in range(settings["probes"]) if i % len(models) == j) for j in range(len(models))]
    return [(model, count) for model, count in zip(models, counts) if count]


def uses_models(params: dict[str, Any], config: Any) -> list[str]:
    """Every model ACAR may call besides its roles': the probe model and the modes' models."""
    settings = ACARParams(**(params or {})).model_dump()
    probe = settings["probe_model"] or config.model_for_role("probe")
    probes = settings.get("probe_models") or [probe]
    return sorted({*probes, *mode_models(settings, config.model_for_role, config)})


def combined_vote(probe_answers: Sequence[str | None], model_answers: Sequence[str | None]) -> VoteOutcome:
    """Vote over the models' answers (strongest first) then the probes' (see the module docstring)."""
    return majority_vote(list(reversed(model_answers)) + list(probe_answers))


def answer_keys(models: Sequence[str]) -> list[str]:
    """Keys for model_answers: the model's name, with "#2", "#3" for a repeated one."""
    keys, seen = [], {}
    for name in models:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


class ACARState(TypedDict, total=False):
    task: str
    params: dict[str, Any]
    probe_model: str
    probes: list[dict[str, Any]]
    sigma: float
    mode: str
    models: list[str]
    results: Annotated[list[dict[str, Any]], operator.add]
    judged: dict[str, Any]
    stop_reason: str
    answer: str | None
    solution: str | None
    winner: str | None


def _mode_seed(settings: dict[str, Any], position: int) -> int:
    base = settings["mode_params"].get("seed", settings["seed"] + settings["probes"])
    return int(base) + position


def build_acar(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    """The compiled ACAR graph. Input: {"task": str}; output adds answer, solution, stop_reason, sigma, mode."""
    from refinegraph.compiled import compiled_graph

    settings = ACARParams.model_validate(params or {}).model_dump()
    for position in range(3):  # bad mode params fail now, before any run is recorded
        compiled_graph(settings["mode_graph"], {**settings["mode_params"], "seed": _mode_seed(settings, position)})
    project = get_projection(settings["answer"])

    async def start(state: ACARState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        probe_model = ",".join(settings["probe_models"] or []) or settings["probe_model"] or ctx.model_name("probe")
        return {"probe_model": probe_model, "probes": [], "mode": "one", "models": [],
                "sigma": 0.0}

    async def probe(state: ACARState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        samples: list[dict[str, Any]] = []
        for offset, (model, count) in enumerate(probe_plan(settings, state["probe_model"])):
            with ctx.playing(model, "probe"):
                samples += await sample_answers(ctx, state["task"], n=count,
                                                temperature=settings["probe_temperature"],
                                                max_tokens=settings["max_tokens"], seed=settings["seed"] + offset,
                                                kind=settings["answer"], role="probe", first_index=len(samples))
        return {"probes": samples}

    async def route(state: ACARState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        answers = [p["answer"] for p in state["probes"]]
        value = round(sigma(answers), 6)
        mode = choose_mode(value, settings["thresholds"])
        models = mode_models(settings, ctx.model_name, ctx.config)[:MODE_SIZES[mode]]
        ctx.emit(Route(phase="decided", probe_model=state["probe_model"], probes=len(answers), probe_answers=answers,
                       sigma=value, thresholds=settings["thresholds"],
                       probe_temperature=settings["probe_temperature"], probe_seed=settings["seed"], mode=mode,
                       models=models))
        return {"sigma": value, "mode": mode, "models": models}

    async def mode_step(state: ACARState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        position = len(state.get("results", []))
        model = state["models"][position]
        sub = compiled_graph(settings["mode_graph"],
                             {**settings["mode_params"], "seed": _mode_seed(settings, position)})
        try:
            with ctx.playing(model):
                result = await sub.ainvoke({"task": state["task"]}, context=ctx)
        except BudgetExceeded:  # a mode graph that does not handle it itself
            return {"stop_reason": "budget"}
        text = result.get("answer")
        record = {"model": model, "answer": project(text) if text else None,
                  "solution": result.get("solution") or text, "stop_reason": result.get("stop_reason", "done")}
        if record["stop_reason"] != "budget":
            return {"results": [record]}
        # refused part-way: what it answered counts; a model refused before answering is left out
        return {"stop_reason": "budget", **({"results": [record]} if record["answer"] is not None else {})}

    async def judge(state: ACARState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Three-model mode: a strict majority wins; else the judge picks (or the vote, on fallback)."""
        ctx = runtime.context
        results = state["results"]
        answers = [r["answer"] for r in results]
        outcome = majority_vote(list(reversed(answers)))
        ctx.emit(Vote(**outcome.as_event()))
        if outcome.winner and outcome.winner.votes * 2 > len(answers):
            return {"judged": {"winner": outcome.winner.key, "by": "majority"}}
        options = []
        for record in reversed(results):  # strongest first, one option per distinct answer
            if record["answer"] is not None and all(o["answer"] != record["answer"] for o in options):
                options.append({"answer": record["answer"], "solution": record["solution"]})
        if len(options) == 1:
            return {"judged": {"winner": options[0]["answer"], "by": "only_answer"}}
        if not options or not settings["judge"]:
            return {"judged": {}}
        chosen = await judge_answers(ctx, state["task"], options, max_tokens=settings["judge_max_tokens"],
                                     seed=settings["seed"])
        if chosen is None:
            return {"judged": {}}
        return {"judged": {"winner": options[chosen]["answer"], "by": "judge"}}

    async def finish(state: ACARState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        probes = state.get("probes", [])
        results = state.get("results", [])
        probe_answers = [p["answer"] for p in probes]
        judged = state.get("judged") or {}
        if judged.get("winner") is not None:
            winner = judged["winner"]
        else:  # mode two, a judge's fallback, a budget stop; with no model answers: the probes' majority
            outcome = combined_vote(probe_answers, [r["answer"] for r in results])
            ctx.emit(Vote(**outcome.as_event()))
            winner = outcome.winner.key if outcome.winner else None
        reason = state.get("stop_reason") or ("done" if winner is not None else "no_answer")
        solution = next((r["solution"] for r in reversed(results) if winner is not None and r["answer"] == winner),
                        None)
        chosen = next((p["index"] for p in probes if winner is not None and p["answer"] == winner), None)
        if solution is None and chosen is not None:
            solution = probes[chosen]["text"]
        models = state.get("models", [])
        keys = answer_keys([r["model"] for r in results])
        ctx.emit(Route(phase="final", probe_model=state.get("probe_model", ""), probes=len(probes),
                       probe_answers=probe_answers, sigma=state.get("sigma", 0.0), thresholds=settings["thresholds"],
                       probe_temperature=settings["probe_temperature"], probe_seed=settings["seed"],
                       mode=state.get("mode", "one"), models=models,
                       model_answers={k: r["answer"] for k, r in zip(keys, results)},
                       tokens=ctx.usage.total_tokens, cost_usd=ctx.cost_usd or None, winner=winner))
        ctx.emit(Stop(reason=reason, chosen=chosen))
        return {"answer": display(winner, settings["answer"]), "solution": solution, "stop_reason": reason,
                "winner": winner, "sigma": state.get("sigma", 0.0), "mode": state.get("mode", "one")}

    def after_probe(state: ACARState) -> str:
        return "finish" if state.get("stop_reason") or not state.get("probes") else "route"

    def after_route(state: ACARState) -> str:
        return "mode" if state["models"] else "finish"

    def after_mode(state: ACARState) -> str:
        if state.get("stop_reason"):
            return "finish"
        if len(state.get("results", [])) < len(state["models"]):
            return "mode"
        return "judge" if state["mode"] == "three" else "finish"

    graph = MethodGraph(ACARState, settings, start=start)
    graph.node("probe", probe, budget=True)
    graph.node("route", route)
    graph.node("mode", mode_step, budget=True)
    graph.node("judge", judge, budget=True)
    graph.node("finish", finish)
    graph.branch("probe", after_probe, ["route", "finish"])
    graph.branch("route", after_route, ["mode", "finish"])
    graph.branch("mode", after_mode, ["mode", "judge", "finish"])
    graph.edge("judge", "finish")
    return graph.compile(checkpointer, name="acar")


def register() -> None:
    register_graph("acar", build_acar,
                   "ACAR: probe a cheap model, route by sigma (disagreement) to one, two or three models",
                   params=ACARParams, sets=("solution", "winner", "sigma", "mode"), uses_models=uses_models)


register()
