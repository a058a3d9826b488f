"""Wrapping a node function so the trace shows when it started and finished."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from langgraph.runtime import Runtime

from refinegraph.context import RunContext, current_node
from refinegraph.events import NodeFinished, NodeStarted

NodeFn = Callable[[Any, Runtime[RunContext]], Awaitable[dict[str, Any]]]

node_events: ContextVar[bool] = ContextVar("node_events", default=True)
"""Whether `traced` nodes emit their events. Always on in a run; code that drives a compiled
graph itself, with a context of its own that records nothing (the overhead and throughput
benchmarks' "bare LangGraph"), switches it off so the nodes run as plain functions."""


def traced(name: str, fn: NodeFn) -> NodeFn:
    """`fn` with node_started / node_finished events around it, and its name in context."""

    @functools.wraps(fn)
    async def node(state: Any, runtime: Runtime[RunContext]) -> dict[str, Any]:
        if not node_events.get():
            return await fn(state, runtime)
        ctx = runtime.context
        token = current_node.set(name)
        ctx.emit(NodeStarted(node=name))
        started = time.perf_counter()
        outcome = "error"
        try:
            update = await fn(state, runtime)
            outcome = "ok"
            return update
        finally:
            ctx.emit(NodeFinished(node=name, duration_ms=round((time.perf_counter() - started) * 1000, 3),
                                  outcome=outcome))
            current_node.reset(token)

    return node


def stops_on_budget(fn: NodeFn) -> NodeFn:
    """A node that, when the budget refuses its call, ends the run with stop_reason="budget".

    The budget event itself is written by the choke point; the graph then routes to its
    finish node, which returns the best answer so far.
    """
    from refinegraph.budget import BudgetExceeded

    @functools.wraps(fn)
    async def node(state: Any, runtime: Runtime[RunContext]) -> dict[str, Any]:
        try:
            return await fn(state, runtime)
        except BudgetExceeded:
            return {"stop_reason": "budget"}

    return node


def stopped_or(next_node: str) -> Callable[[Any], str]:
    """A conditional edge: to "finish" once a node has set stop_reason, else to `next_node`."""

    def route(state: Any) -> str:
        return "finish" if state.get("stop_reason") else next_node

    return route
