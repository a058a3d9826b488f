"""refinegraph: verify-and-refine LLM agents as LangGraph state machines, with decision
traces that can be listed, read, verified and replayed.

The public names below are imported on first use (PEP 562), so that `import refinegraph`
(and with it every CLI command, `--help` included) does not pay for pydantic, langgraph or
the model SDKs before something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from refinegraph.version import __version__

_LAZY = {
    "Budget": "refinegraph.budget",
    "BudgetExceeded": "refinegraph.budget",
    "Config": "refinegraph.config",
    "ConfigError": "refinegraph.config",
    "ModelSpec": "refinegraph.config",
    "load_config": "refinegraph.config",
    "RunContext": "refinegraph.context",
    "get_graph": "refinegraph.registry",
    "list_graphs": "refinegraph.registry",
    "register_graph": "refinegraph.registry",
    "RunFailed": "refinegraph.runner",
    "RunResult": "refinegraph.runner",
    "replay": "refinegraph.runner",
    "resume": "refinegraph.runner",
    "run": "refinegraph.runner",
}

__all__ = [
    "__version__", "Budget", "BudgetExceeded", "Config", "ConfigError", "ModelSpec", "load_config",
    "RunContext", "get_graph", "list_graphs", "register_graph", "RunFailed", "RunResult", "replay",
    "resume", "run",
]

if TYPE_CHECKING:
    from refinegraph.budget import Budget, BudgetExceeded
    from refinegraph.config import Config, ConfigError, ModelSpec, load_config
    from refinegraph.context import RunContext
    from refinegraph.registry import get_graph, list_graphs, register_graph
    from refinegraph.runner import RunFailed, RunResult, replay, resume, run


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'refinegraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
