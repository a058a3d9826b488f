"""The methods, each a builder that returns a compiled LangGraph graph and registers itself."""

from refinegraph.graphs import self_refine, sql  # noqa: F401  (each registers its graphs)
