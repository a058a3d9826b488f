"""The methods, each a builder that returns a compiled LangGraph graph and registers itself."""

from refinegraph.graphs import self_refine  # noqa: F401  (registers "self-refine")
