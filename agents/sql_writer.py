"""SQL writer: n candidate queries for a question, from the schema (and BIRD's evidence)."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from refinegraph.context import RunContext
from refinegraph.prompts import load_prompt
from refinegraph.tools.sql.extract import extract_sql


def evidence_line(state: dict[str, Any]) -> str:
    return f"Evidence: {state['evidence']}" if state.get("evidence") else ""


async def write_sql(state: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
    """`params.n` candidates in one call (temperature 0 when n is 1)."""
    params = state["params"]
    n = params["n"]
    messages = load_prompt("sql_writer").render(schema=state["schema"], question=state["question"],
                                                evidence=evidence_line(state), dialect=state["dialect"])
    samples = await runtime.context.sample(
        "solver", messages, n=n, temperature=params["temperature"] if n > 1 else 0.0,
        max_tokens=params["max_tokens"], seed=params["seed"])
    return {"candidates": [{"sql": extract_sql(text)} for text in samples.texts]}
