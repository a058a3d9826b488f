"""Code filter: n programs sampled in one request, each run against the task's tests in
the sandbox (tools.code); the first that passes is the answer.

Input: {"task": a HumanEval-style prompt (signature and docstring), "tests": test code
defining check(candidate), "entry_point": the function's name}. entry_point defaults to
the prompt's last def. Without tests a candidate passes when its program runs without
error (a recorded `no_tests` fallback).

Choice: the first candidate that passes (several passing: the earliest; the code_exec
events show every one). None passing: a recorded `no_candidate_passed` fallback, then
the first candidate that ran and failed only a test's assert, else the first candidate
(stop_reason "no_passing_candidate"). Output adds answer (the chosen candidate's code),
solution (its whole reply), chosen, passed, candidates (status, outcome, message of
each) and stop_reason. A replay re-executes every program, as the SQL graphs re-execute
their SQL, so a machine where the programs behave otherwise shows decisions_match: false.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from refinegraph.agents.code_verifier import run_tests
from refinegraph.agents.code_writer import write_programs
from refinegraph.context import RunContext
from refinegraph.events import Stop
from refinegraph.registry import register_graph
from refinegraph.tools.code.programs import entry_point_of
from refinegraph.wiring import MethodGraph


class CodeFilterParams(BaseModel):
    """Sampling and the sandbox's limits. Isolation "strict" (the default) and "auto" both mean
    bubblewrap or no program runs (each candidate's code_exec says "sandbox_unavailable", a
    recorded fallback, and the message names the package to install): the graph is served to
    anyone who can send a chat request, so it never runs model code unisolated, and a request
    cannot ask for less (tools.code's "rlimits" is for callers of run_python only)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(4, ge=1, le=64)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    seed: int = 0
    max_tokens: int = Field(512, ge=16)
    timeout_s: float = Field(5.0, gt=0, le=120)
    memory_mb: int = Field(256, ge=32, le=8192)
    max_output_bytes: int = Field(64_000, ge=1000, le=10_000_000)
    max_processes: int = Field(16, ge=1, le=256)
    isolation: Literal["auto", "strict"] = "strict"

    def sandbox(self) -> dict[str, Any]:
        return self.model_dump(include={"timeout_s", "memory_mb", "max_output_bytes", "max_processes",
                                        "isolation"})


class CodeFilterState(TypedDict, total=False):
    task: str
    tests: str
    entry_point: str
    params: dict[str, Any]
    candidates: Annotated[list[dict[str, Any]], lambda old, new: new]
    stop_reason: str
    answer: str | None
    solution: str | None
    chosen: int | None
    passed: bool


def choose(candidates: list[dict[str, Any]]) -> tuple[int | None, bool]:
    """(chosen index, whether it passed): the first passing, else the first that failed only
    an assert, else the first; None when there is no candidate."""
    if not candidates:
        return None, False
    passing = next((c["index"] for c in candidates if c.get("passed")), None)
    if passing is not None:
        return passing, True
    ran = next((c["index"] for c in candidates if c.get("outcome") == "failed"), None)
    return (ran if ran is not None else candidates[0]["index"]), False


async def finish(state: CodeFilterState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Choose (see the module docstring) and record why."""
    ctx = runtime.context
    candidates = state.get("candidates", [])
    reason = state.get("stop_reason") or "done"
    chosen, passed = choose(candidates)
    if chosen is not None and not passed:
        how = "it ran and failed a test" if candidates[chosen].get("outcome") == "failed" else "the first"
        ctx.fallback("no_candidate_passed", f"none of {len(candidates)} candidates passed: candidate {chosen} "
                     f"({how})", ", ".join(f"{c['index']}: {c.get('status')}" for c in candidates))
        reason = "no_passing_candidate" if reason == "done" else reason
    passing = sum(1 for c in candidates if c.get("passed"))
    ctx.emit(Stop(reason=reason, chosen=chosen, score=round(passing / len(candidates), 4) if candidates else None))
    summary = [{k: c.get(k) for k in ("index", "extracted", "shape", "status", "outcome", "message")}
               for c in candidates]
    pick = candidates[chosen] if chosen is not None else None
    return {"answer": pick["code"] if pick else None, "solution": pick["text"] if pick else None,
            "chosen": chosen, "passed": passed, "candidates": summary, "stop_reason": reason}


def build_code_filter(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    settings = CodeFilterParams.model_validate(params or {})

    async def start(state: CodeFilterState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        entry_point = state.get("entry_point") or entry_point_of(state["task"])
        if not entry_point:
            raise ValueError("code-filter needs an entry_point: name it in the input, or define the function "
                             "(def NAME(...)) in the task")
        return {"entry_point": entry_point, "tests": state.get("tests", "")}

    async def solve(state: CodeFilterState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        return {"candidates": await write_programs(
            runtime.context, state["task"], entry_point=state["entry_point"], n=settings.n,
            temperature=settings.temperature, max_tokens=settings.max_tokens, seed=settings.seed)}

    async def verify(state: CodeFilterState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        if not state["tests"].strip():
            ctx.fallback("no_tests", "no tests given: a candidate passes when its program runs without error")
        checked = await run_tests(ctx, [c["code"] for c in state["candidates"]], prompt=state["task"],
                                  tests=state["tests"], entry_point=state["entry_point"], sandbox=settings.sandbox())
        return {"candidates": [{**c, **r} for c, r in zip(state["candidates"], checked)]}

    graph = MethodGraph(CodeFilterState, settings.model_dump(), start=start)
    graph.node("solver", solve, budget=True)
    graph.node("verifier", verify)
    graph.node("finish", finish)
    graph.unless_stopped("solver", "verifier")
    graph.edge("verifier", "finish")
    return graph.compile(checkpointer, name="code-filter")


def register() -> None:
    register_graph("code-filter", build_code_filter,
                   "Code filter: n programs, each run against the task's tests in a sandbox; the first that passes",
                   params=CodeFilterParams, reads=("entry_point", "tests"),
                   sets=("solution", "chosen", "passed", "candidates"))


register()
