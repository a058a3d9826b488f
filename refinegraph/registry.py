"""Graphs register themselves here by name; the runtime knows no graph otherwise.

Built-in graphs live in `refinegraph.graphs`; other packages add theirs through the
`refinegraph.graphs` entry-point group (each entry point is a callable that registers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

Builder = Callable[..., Any]


class UnknownGraph(KeyError):
    """A graph name nobody registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class GraphSpec:
    name: str
    build: Builder
    """build(params: dict, *, checkpointer=None) -> compiled LangGraph graph"""
    description: str
    input_key: str = "task"
    uses_models: Callable[[dict[str, Any], Any], list[str]] | None = None
    """uses_models(params, config) -> model names the graph calls besides its roles' (ACAR)."""
    tool_params: dict[str, Any] | None = None
    """The params under which the graph answers a conversation with offered tools (its
    votes read tool calls, e.g. {"answer": "tool_call"}); None: it takes no tools."""


_graphs: dict[str, GraphSpec] = {}
_loaded = False


def register_graph(name: str, build: Builder, description: str, input_key: str = "task",
                   uses_models: Callable[[dict[str, Any], Any], list[str]] | None = None,
                   tool_params: dict[str, Any] | None = None) -> None:
    _graphs[name] = GraphSpec(name, build, description, input_key, uses_models, tool_params)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("refinegraph.graphs")
    for entry in entry_points(group="refinegraph.graphs"):
        if entry.name not in _graphs:
            entry.load()()


def get_graph(name: str) -> GraphSpec:
    _load()
    if name not in _graphs:
        raise UnknownGraph(f"unknown graph {name!r}; known graphs: {', '.join(sorted(_graphs))}")
    return _graphs[name]


def list_graphs() -> list[GraphSpec]:
    _load()
    return [_graphs[k] for k in sorted(_graphs)]
