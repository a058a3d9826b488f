"""The methods, each a builder that returns a compiled LangGraph graph and registers itself
when its module is imported (the registry imports `MODULES` on first use).

`CATALOG` is what `refinegraph graphs` prints without importing a graph module (they import
langgraph, the models and the tools: a second of start-up): each graph's name and the
description its module registers. A test checks it against the registry, so a new graph
adds its line here as well as its `register_graph` call.
"""

MODULES = ("acar", "best_of_n", "code_filter", "consistency", "magicore", "self_refine", "sets", "sql",
           "step_search")
"""The modules under refinegraph.graphs that register graphs."""

CATALOG: dict[str, str] = {
    "acar": "ACAR: probe a cheap model, route by sigma (disagreement) to one, two or three models",
    "adaptive-sc": "Adaptive self-consistency: sample in batches until a Beta/Dirichlet posterior (or ESC) says stop",
    "beam-search": "Step-level beam search: n beams, each step scored by a process reward; the best n/M survive",
    "best-of-n": "Best-of-N: n samples, each scored by a reward model or LLM judge; the highest score wins",
    "code-filter": "Code filter: n programs, each run against the task's tests in a sandbox; the first that passes",
    "csc-sql": "Text-to-SQL: CSC-SQL, execution vote then merge-revise of the top two",
    "dvts": "Diverse verifier tree search: n/M independent subtrees, each greedy on step rewards",
    "greedy": "Greedy: one sample at temperature 0, its answer read out",
    "magicore": "MAgICoRe: reward-scored samples; easy -> weighted vote, hard -> reviewer/refiner rounds",
    "particle-filter": "Particle filtering: n particles resampled each step in proportion to softmax(step reward)",
    "self-consistency": "Self-consistency: n samples in one request, majority vote over normalized answers",
    "self-refine": "Self-Refine: solve, critique (structured verdict), refine; best-scored version wins",
    "sets": "SETS: sample m solutions, verify and correct each up to r rounds, vote over the verified",
    "sql-greedy": "Text-to-SQL: one query at temperature 0, executed",
    "sql-repair": "Text-to-SQL: one query at temperature 0; on an execution error, repaired from the error",
    "sql-sc": "Text-to-SQL: n candidates, vote by execution result",
}
"""Built-in graph name -> description, for listing without building (see the module docstring)."""
