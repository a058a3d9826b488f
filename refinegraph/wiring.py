"""The wiring every graph builder repeats, done once (the graph contract: refinegraph.registry).

    graph = MethodGraph(VoteState, settings, start={"batches": 0})
    graph.node("sampler", sample, budget=True)    # traced; a refused call sets stop_reason="budget"
    graph.node("finish", finish)                  # the node that answers; "finish" -> END
    graph.unless_stopped("sampler", "finish")     # START -> start -> sampler (the first node) -> ...
    return graph.compile(checkpointer, name="my-graph")

What it adds around the nodes a builder declares: a "start" node that puts the validated
params into the state (under "params", with the `start` extras), the edges START -> start
-> the first node declared, node_started/node_finished around every node, the budget stop
for nodes declared with `budget=True`, and "finish" -> END.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from refinegraph.context import RunContext
from refinegraph.nodes import NodeFn, stopped_or, stops_on_budget, traced

FINISH = "finish"
StartFn = Callable[[Any, Runtime[RunContext]], Awaitable[dict[str, Any]]]


class MethodGraph:
    """A LangGraph StateGraph wired to the graph contract; declare nodes and edges, then compile."""

    def __init__(self, state_schema: type, settings: Mapping[str, Any], *,
                 start: Mapping[str, Any] | StartFn | None = None):
        """`settings`: the validated params (the params model's model_dump()); `start`: more
        initial state, as a dict or an async function of (state, runtime) returning one
        (its "params", if any, replaces the settings in the state)."""
        self._graph = StateGraph(state_schema, context_schema=RunContext)
        self._first: str | None = None
        params = dict(settings)

        async def begin(state: Any, runtime: Runtime[RunContext]) -> dict[str, Any]:
            extra = await start(state, runtime) if callable(start) else copy.deepcopy(dict(start or {}))
            return {"params": params, **extra}

        self._graph.add_node("start", begin)
        self._graph.add_edge(START, "start")

    def node(self, name: str, fn: NodeFn, *, budget: bool = False, traced_node: bool = True) -> MethodGraph:
        """Add a node. `budget=True`: a BudgetExceeded from it becomes stop_reason="budget".
        `traced_node=False` only for a node LangGraph re-runs from its start (interrupt())."""
        wrapped = stops_on_budget(fn) if budget else fn
        self._graph.add_node(name, traced(name, wrapped) if traced_node else wrapped)
        if self._first is None:
            self._first = name
            self._graph.add_edge("start", name)
        return self

    def edge(self, source: str, target: str) -> MethodGraph:
        self._graph.add_edge(source, target)
        return self

    def branch(self, source: str, route: Callable[[Any], str], targets: Sequence[str]) -> MethodGraph:
        """A conditional edge: `route(state)` names the next node, one of `targets`."""
        self._graph.add_conditional_edges(source, route, list(targets))
        return self

    def unless_stopped(self, source: str, target: str) -> MethodGraph:
        """source -> "finish" once a node has set stop_reason, else source -> target."""
        targets = [target] if target == FINISH else [target, FINISH]
        self._graph.add_conditional_edges(source, stopped_or(target), targets)
        return self

    def compile(self, checkpointer: Any = None, *, name: str) -> Any:
        """The compiled graph (adds "finish" -> END)."""
        self._graph.add_edge(FINISH, END)
        return self._graph.compile(checkpointer=checkpointer, name=name)

    @property
    def builder(self) -> StateGraph:
        """The underlying StateGraph, for what the methods above do not cover (END edges)."""
        return self._graph
