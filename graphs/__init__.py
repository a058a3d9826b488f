"""The methods, each a builder that returns a compiled LangGraph graph and registers itself
when its module is imported.

`CATALOG` names each built-in graph's module and description: the registry imports only
the module of the graph a run asks for, and `refinegraph graphs` prints the descriptions
without importing any (graph modules import langgraph, the models and the tools: a second
of start-up and ~10 MB for all of them). A test checks it against the registry, so a new
graph adds its line here as well as its `register_graph` call.
"""

CATALOG: dict[str, tuple[str, str]] = {
    "acar": ("acar", "ACAR: probe a cheap model, route by sigma (disagreement) to one, two or three models"),
    "adaptive-sc": ("consistency",
                    "Adaptive self-consistency: sample in batches until a Beta/Dirichlet posterior (or ESC) says stop"),
    "beam-search": ("step_search",
                    "Step-level beam search: n beams, each step scored by a process reward; the best n/M survive"),
    "best-of-n": ("best_of_n",
                  "Best-of-N: n samples, each scored by a reward model or LLM judge; the highest score wins"),
    "code-filter": ("code_filter",
                    "Code filter: n programs, each run against the task's tests in a sandbox; the first that passes"),
    "csc-sql": ("sql", "Text-to-SQL: CSC-SQL, execution vote then merge-revise of the top two"),
    "dvts": ("step_search", "Diverse verifier tree search: n/M independent subtrees, each greedy on step rewards"),
    "greedy": ("consistency", "Greedy: one sample at temperature 0, its answer read out"),
    "magicore": ("magicore", "MAgICoRe: reward-scored samples; easy -> weighted vote, hard -> reviewer/refiner rounds"),
    "particle-filter": ("step_search",
                        "Particle filtering: n particles resampled each step in proportion to softmax(step reward)"),
    "self-consistency": ("consistency",
                         "Self-consistency: n samples in one request, majority vote over normalized answers"),
    "self-refine": ("self_refine",
                    "Self-Refine: solve, critique (structured verdict), refine; best-scored version wins"),
    "sets": ("sets", "SETS: sample m solutions, verify and correct each up to r rounds, vote over the verified"),
    "sql-greedy": ("sql", "Text-to-SQL: one query at temperature 0, executed"),
    "sql-repair": ("sql", "Text-to-SQL: one query at temperature 0; on an execution error, repaired from the error"),
    "sql-sc": ("sql", "Text-to-SQL: n candidates, vote by execution result"),
}
"""Built-in graph name -> (its module under refinegraph.graphs, its description)."""

MODULES = tuple(sorted({module for module, _ in CATALOG.values()}))
"""The modules under refinegraph.graphs that register graphs."""
