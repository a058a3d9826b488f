"""What a graph is, and where graphs are found by name: read this first to write one.

The runtime knows no graph except through this registry. Built-in graphs live in
`refinegraph.graphs` (each module registers its graphs when imported); other packages add
theirs through the `refinegraph.graphs` entry-point group (each entry point is a callable
that registers). The graphs' CATALOG (refinegraph.graphs) says which module holds which
graph, so `get_graph(name)` imports only that one, and `graph_catalog()` names them all
without importing a graph module, for listings that must be fast (`refinegraph graphs`).

The graph contract
------------------
A graph is a name bound to a `GraphSpec`, made by `register_graph`. What it promises:

1. **Parameters**: a pydantic model (`params`), every field with a default and
   `extra="forbid"`, so a misspelt parameter is an error. `build(params, checkpointer=...)`
   validates the caller's dict through it (`params.model_validate`) before anything is
   compiled; the runner turns a `ValidationError` into a `ConfigError` before any run is
   recorded. The validated values go into the state under "params", so the trace's
   run_started and the state say the same. Fields that constrain each other (a model
   validator) say so as JSON Schema too, in a classmethod `schema_rules(defaults)` (see
   `GraphSpec.params_json_schema`): the server's OpenAPI document states per model what
   its checks take, so a client generator or fuzzer never builds a body it refuses.
2. **Input**: the state keys it reads from the caller: `input_key` ("task", or "question"
   for the SQL graphs) always, and the optional `reads` (the SQL graphs' "db", the code
   filter's "entry_point" and "tests"). A plain string given to `run()` becomes
   `{input_key: text}`.
3. **Output**: the state keys it sets by its end. Every graph sets `REQUIRED_OUTPUTS`
   ("answer": the answer as users write it, or None; "stop_reason": why it stopped), which
   is what the runner reads from the final state into `RunResult` (refinegraph.runner),
   plus its own (`sets`: "solution", "chosen", "score", "vote", ...), which callers read
   from `RunResult.state`.
4. **Events**: every node is traced (node_started/node_finished around it,
   refinegraph.nodes.traced) and the node that ends the run ("finish", or one that ends it
   early such as the SQL graphs' refused approval) emits a `stop` event
   (refinegraph.events.Stop: the reason, as in the state; the chosen candidate; its score)
   before it returns the answer. (A graph that runs other graphs inside, as ACAR does, has
   their stop events before its own: the run's last stop event is the graph's.) Decisions
   on the way are events too (vote, verdict, refine, sql_exec, ...: refinegraph.events),
   and a fallback taken is a `fallback` event (RunContext.fallback), never silent.
   run_started and run_finished are the runner's.
5. **Stopping**: a graph stops on its own rule (its stop reasons, e.g. "done",
   "max_iterations", "confident", "no_answer") or because the budget refused a model call:
   the model call raises `BudgetExceeded`, the node returns `{"stop_reason": "budget"}`
   (refinegraph.nodes.stops_on_budget) and the graph goes to "finish", which answers with
   the best so far. Once a node has set stop_reason, the next edge goes to "finish"
   (refinegraph.wiring.MethodGraph.unless_stopped). A graph that lets BudgetExceeded
   escape still ends as a budget stop, recorded as a `budget_unhandled` fallback.

`refinegraph.wiring.MethodGraph` does the wiring this asks for (the start node that puts
the params in the state, tracing, the budget stop, finish -> END), so a builder states
only its own nodes and edges. `check_final_state` checks a finished run's state against
the contract; tests/test_graph_contract.py runs every registered graph through it, and
docs/extending.md writes a new graph step by step.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

Builder = Callable[..., Any]
"""build(params: dict | None = None, *, checkpointer=None) -> compiled LangGraph graph"""

REQUIRED_OUTPUTS = ("answer", "stop_reason")
"""State keys every graph sets by its end: what the runner reads into RunResult."""

REQUIRED_EVENTS = ("node_started", "node_finished", "stop")
"""Event types every graph's run emits (besides the runner's run_started and run_finished)."""

BUDGET_STOP = "budget"
"""The stop reason of a run whose budget refused a model call."""


class UnknownGraph(KeyError):
    """A graph name nobody registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class ContractViolation(ValueError):
    """A graph that does not keep the contract above (its message says which clause)."""


MODEL_NAME = "x-refinegraph-model-name"
"""A params field's JSON Schema key marking it as naming configured models (a str or a list
of them): the server's OpenAPI document lists the config's model names there."""


@dataclass(frozen=True)
class GraphSpec:
    """One registered graph: how to build it and what it promises (see the module docstring)."""

    name: str
    build: Builder
    """build(params: dict | None = None, *, checkpointer=None) -> compiled LangGraph graph"""
    description: str
    params: type[BaseModel]
    """The parameters model; `build` validates the caller's dict through it."""
    input_key: str = "task"
    reads: tuple[str, ...] = ()
    """Optional input keys besides input_key."""
    sets: tuple[str, ...] = ()
    """Output keys besides REQUIRED_OUTPUTS."""
    uses_models: Callable[[dict[str, Any], Any], list[str]] | None = None
    """uses_models(params, config) -> model names the graph calls besides its roles' (ACAR)."""
    tool_params: dict[str, Any] | None = None
    """The params under which the graph answers a conversation with offered tools (its
    votes read tool calls, e.g. {"answer": "tool_call"}); None: it takes no tools."""

    @property
    def tests_a_function(self) -> bool:
        """Whether the task must define a function (code-filter runs tests against it): the
        server answers 400 to a chat without one, and the OpenAPI document leaves the graph
        out, since JSON Schema cannot say that of a chat."""
        return "entry_point" in self.reads

    @property
    def outputs(self) -> tuple[str, ...]:
        return REQUIRED_OUTPUTS + tuple(k for k in self.sets if k not in REQUIRED_OUTPUTS)

    def params_json_schema(self, defaults: Mapping[str, Any] | None = None,
                           ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
        """The params model's JSON Schema with its cross-field rules (the model's optional
        classmethod `schema_rules(defaults) -> list[schema]`, where `defaults` stand for a
        field left out: the model's, overridden by `defaults`, e.g. a pipeline's params)."""
        schema = self.params.model_json_schema(ref_template=ref_template)
        known = {name: field.get("default") for name, field in schema.get("properties", {}).items()}
        rules = getattr(self.params, "schema_rules", None)
        if rules is not None:
            schema["allOf"] = rules({**known, **(defaults or {})})
        return schema

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The caller's params checked and completed by the params model (ValidationError if bad)."""
        return self.params.model_validate(dict(params or {})).model_dump()


_graphs: dict[str, GraphSpec] = {}
_loaded = False


def register_graph(name: str, build: Builder, description: str, *, params: type[BaseModel],
                   input_key: str = "task", reads: tuple[str, ...] = (), sets: tuple[str, ...] = (),
                   uses_models: Callable[[dict[str, Any], Any], list[str]] | None = None,
                   tool_params: dict[str, Any] | None = None) -> GraphSpec:
    """Bind `name` to a graph (a later registration of the name replaces the earlier).

    Refuses a params model that would accept a misspelt parameter (contract clause 1)."""
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise ContractViolation(f"graph {name!r}: params must be a pydantic model class, not {params!r}")
    if params.model_config.get("extra") != "forbid":
        raise ContractViolation(f"graph {name!r}: its params model {params.__name__} must forbid unknown fields "
                                "(model_config = ConfigDict(extra='forbid'))")
    required = [field for field, info in params.model_fields.items() if info.is_required()]
    if required:
        raise ContractViolation(f"graph {name!r}: params without a default: {', '.join(required)}")
    spec = GraphSpec(name, build, description, params, input_key, tuple(reads), tuple(sets), uses_models,
                     tool_params)
    _graphs[name] = spec
    return spec


def check_final_state(spec: GraphSpec, state: Mapping[str, Any], events: list[Mapping[str, Any]]) -> None:
    """Raise ContractViolation when a finished run's state or events (its trace's, as dicts)
    break the contract."""
    event_types = [event["type"] for event in events]
    stop_reasons = [event["reason"] for event in events if event["type"] == "stop"]
    missing = [key for key in spec.outputs if key not in state]
    if missing:
        raise ContractViolation(f"graph {spec.name!r} ended without setting {', '.join(missing)}")
    if not isinstance(state["stop_reason"], str) or not state["stop_reason"]:
        raise ContractViolation(f"graph {spec.name!r} ended with stop_reason {state['stop_reason']!r}")
    if state["answer"] is not None and not isinstance(state["answer"], str):
        raise ContractViolation(f"graph {spec.name!r}: answer must be a str or None, "
                                f"not {type(state['answer']).__name__}")
    absent = [kind for kind in REQUIRED_EVENTS if kind not in event_types]
    if absent:
        raise ContractViolation(f"graph {spec.name!r} emitted no {', '.join(absent)} event")
    if stop_reasons and stop_reasons[-1] != state["stop_reason"]:
        raise ContractViolation(f"graph {spec.name!r}: its last stop event says {stop_reasons[-1]!r}, its state "
                                f"{state['stop_reason']!r}")
    if event_types.count("node_started") != event_types.count("node_finished"):
        raise ContractViolation(f"graph {spec.name!r}: a node started without finishing")


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    builtin = importlib.import_module("refinegraph.graphs")
    for module in builtin.MODULES:
        importlib.import_module(f"refinegraph.graphs.{module}")
    _load_entry_points()


def _load_entry_points() -> None:
    from importlib.metadata import entry_points  # ~30 ms: only when graphs are listed or built

    for entry in entry_points(group="refinegraph.graphs"):
        if entry.name not in _graphs:
            entry.load()()


def graph_catalog() -> list[tuple[str, str]]:
    """(name, description) of every graph, sorted by name: the built-ins from their catalog
    (no graph module imported), then whatever the entry points and register_graph added."""
    if not _loaded:
        builtin = importlib.import_module("refinegraph.graphs")
        _load_entry_points()
        described = {name: description for name, (_, description) in builtin.CATALOG.items()}
        described.update({name: spec.description for name, spec in _graphs.items()})
    else:
        described = {name: spec.description for name, spec in _graphs.items()}
    return sorted(described.items())


def get_graph(name: str) -> GraphSpec:
    if name not in _graphs and not _loaded:
        builtin = importlib.import_module("refinegraph.graphs")
        if name in builtin.CATALOG:  # its module only (the others cost memory and start-up)
            importlib.import_module(f"refinegraph.graphs.{builtin.CATALOG[name][0]}")
    if name not in _graphs:
        _load()
    if name not in _graphs:
        raise UnknownGraph(f"unknown graph {name!r}; known graphs: {', '.join(sorted(_graphs))}")
    return _graphs[name]


def list_graphs() -> list[GraphSpec]:
    _load()
    return [_graphs[k] for k in sorted(_graphs)]
