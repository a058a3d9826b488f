"""Compiled graphs, built once per (graph, params) and process: what a run starts from.

Apart from the runner so that a graph that runs another inside it (ACAR's modes) takes the
same cache without importing the runner.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from refinegraph.config import ConfigError
from refinegraph.registry import get_graph
from refinegraph.trace.chain import canonical_json

RECURSION_LIMIT = 200
"""LangGraph's step limit for one run (a graph whose params could pass it says so early)."""

_compiled: dict[tuple[str, str], Any] = {}


def compiled_graph(graph_name: str, params: dict[str, Any], checkpointer: Any = None) -> Any:
    """The compiled graph for (graph, params), built once per process.

    Compiling costs milliseconds, more than refinegraph's whole per-run bookkeeping, so
    each run takes a shallow copy of the cached graph with its own checkpointer. Bad
    params fail here, before any run is recorded.
    """
    key = (graph_name, canonical_json(params))
    if key not in _compiled:
        try:
            _compiled[key] = get_graph(graph_name).build(params, checkpointer=None)
        except ValidationError as exc:
            raise params_error(graph_name, exc) from None
    graph = _compiled[key]
    return graph.copy({"checkpointer": checkpointer}) if checkpointer is not None else graph


def params_error(graph_name: str, exc: ValidationError) -> ConfigError:
    """The ConfigError naming each bad parameter of `graph_name`."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())
    return ConfigError(f"bad parameters for graph {graph_name!r}: {problems}")


def check_json_params(graph_name: str, fixed: dict[str, Any], asked: dict[str, Any]) -> None:
    """The params `asked` (a request body's) over `fixed` (a pipeline's, read leniently at
    load as config files are), checked strictly as JSON types (`false` is no number, `"5"`
    no integer), else the ConfigError naming each bad one. The lenient build stays for
    config files and the CLI. Nothing asked, nothing to check here: `fixed` is built by the
    lenient model, and the caller compiles the merged params next (`compiled_graph`)."""
    if not asked:
        return
    model = get_graph(graph_name).params
    try:
        base = model.model_validate(fixed).model_dump()
        model.model_validate({**base, **asked}, strict=True)
    except ValidationError as exc:
        raise params_error(graph_name, exc) from None


def clear_compiled_graphs() -> None:
    """Forget compiled graphs (after changing a graph's nodes at run time, as tests do)."""
    _compiled.clear()
