"""A user's own LangGraph graph with refinegraph graphs inside it as subgraphs.

    classify --(number question)--> self-consistency --> format
             +--(anything else)---> self-refine -------+

Each refinegraph node is a whole refinegraph run (trace, budget, replay); the parent
keeps its run id. Runs on the embedded model with no configuration:

    python examples/subgraph.py "What is 12 + 7?"
    python examples/subgraph.py "Explain in one sentence why the sky is blue."
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from refinegraph.budget import Budget
from refinegraph.embed import as_subgraph
from refinegraph.runner import default_store
from refinegraph.trace.verify import verify_run


class AppState(TypedDict, total=False):
    question: str
    kind: str
    answer: str | None
    run_id: str
    stop_reason: str
    reply: str


def classify(state: AppState) -> dict[str, Any]:
    """The app's own routing: arithmetic goes to voting, the rest to critique-and-refine."""
    return {"kind": "math" if re.search(r"\d", state["question"]) else "prose"}


def format_reply(state: AppState) -> dict[str, Any]:
    answer = state.get("answer") or "(no answer)"
    return {"reply": f"[{state['kind']}] {answer}  (refinegraph run {state['run_id'][:12]}, {state['stop_reason']})"}


def build_app(models: dict[str, Any] | None = None, store: Any = None) -> Any:
    """The parent graph; `models` swaps the configured backends (tests pass a test double)."""
    common = {"models": models, "store": store, "stop_reason_key": "stop_reason", "budget": Budget(max_tokens=4000)}
    vote = as_subgraph("self-consistency", params={"n": 3, "max_tokens": 96}, input_key="question", **common)
    refine = as_subgraph("self-refine", params={"max_iterations": 1, "solver_max_tokens": 96,
                                                "critic_max_tokens": 160, "refiner_max_tokens": 96},
                         input_key="question", **common)
    builder = StateGraph(AppState)
    builder.add_node("classify", classify)
    builder.add_node("vote", vote)
    builder.add_node("refine", refine)
    builder.add_node("format", format_reply)
    builder.add_edge(START, "classify")
    builder.add_conditional_edges("classify", lambda s: "vote" if s["kind"] == "math" else "refine",
                                  ["vote", "refine"])
    builder.add_edge("vote", "format")
    builder.add_edge("refine", "format")
    builder.add_edge("format", END)
    return builder.compile()


async def main(question: str) -> dict[str, Any]:
    state = await build_app().ainvoke({"question": question})
    print(state["reply"])
    report = verify_run(default_store(), state["run_id"])
    print(f"inner trace verifies: {report.ok}   (see it: refinegraph trace show {state['run_id']})")
    return state


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "What is 12 + 7?"))
