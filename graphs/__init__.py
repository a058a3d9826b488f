"""The methods, each a builder that returns a compiled LangGraph graph and registers itself."""

from refinegraph.graphs import (  # noqa: F401  (each registers its graphs)
    acar,
    best_of_n,
    code_filter,
    consistency,
    magicore,
    self_refine,
    sets,
    sql,
    step_search,
)
