"""refinegraph: verify-and-refine LLM agents as LangGraph state machines, with decision
traces that can be listed, read, verified and replayed."""

__version__ = "0.1.0"

from refinegraph.budget import Budget, BudgetExceeded  # noqa: E402
from refinegraph.config import Config, ConfigError, ModelSpec, load_config  # noqa: E402
from refinegraph.context import RunContext  # noqa: E402
from refinegraph.registry import get_graph, list_graphs, register_graph  # noqa: E402
from refinegraph.runner import RunFailed, RunResult, replay, resume, run  # noqa: E402

__all__ = [
    "__version__", "Budget", "BudgetExceeded", "Config", "ConfigError", "ModelSpec", "load_config",
    "RunContext", "get_graph", "list_graphs", "register_graph", "RunFailed", "RunResult", "replay",
    "resume", "run",
]
