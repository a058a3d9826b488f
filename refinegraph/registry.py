"""Graphs register themselves here by name; the runtime knows no graph otherwise.

Built-in graphs live in `refinegraph.graphs`, each module registering its graphs when
imported; its CATALOG says which module holds which graph, so `get_graph(name)` imports only
that one. Other packages add theirs through the `refinegraph.graphs` entry-point group (each
entry point is a callable that registers). `graph_catalog()` names them all without
importing a built-in graph module, for listings that must be fast (`refinegraph graphs`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
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
