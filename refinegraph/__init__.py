"""refinegraph: verify-and-refine LLM agents as LangGraph state machines, with decision
traces that can be listed, read, verified and replayed."""

from refinegraph.budget import Budget, BudgetExceeded
from refinegraph.config import Config, ConfigError, ModelSpec, load_config
from refinegraph.context import RunContext
from refinegraph.registry import get_graph, list_graphs, register_graph
from refinegraph.runner import RunFailed, RunResult, replay, resume, run
from refinegraph.version import __version__

__all__ = [
    "__version__", "Budget", "BudgetExceeded", "Config", "ConfigError", "ModelSpec", "load_config",
    "RunContext", "get_graph", "list_graphs", "register_graph", "RunFailed", "RunResult", "replay",
    "resume", "run",
]
