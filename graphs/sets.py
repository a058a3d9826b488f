"""SETS (Self-Enhanced Test-Time Scaling): sample, self-verify, self-correct, vote.

m solutions are sampled in one request. Each is then checked, one solution after another
(so the trace's order is fixed and a replay meets its calls in the same order): the
verifier gives a structured verdict (round 0 checks the sample); a solution judged not
correct goes to the corrector (task, latest solution, the verdict's reason; not the
history), and the correction is checked again (round k checks correction k). `r` caps
the corrections per solution, so a solution costs at most r + 1 verdicts and r
corrections; the last verdict on a solution is the one that counts.

An unreadable verdict is a recorded `verifier_unparseable` fallback with correct=None:
not verified, so the solution is corrected like a rejected one (the corrector is told
the checker gave no reason), within the same cap.

Final answer: a majority vote over the final solutions' answers counting only those
whose last verdict is "correct" and whose answer is readable (weight 1; the others are
listed with weight 0); when no solution is, every solution counts. Ties go to the
solution sampled first. A refused call (budget) ends the run with that same vote over
what exists (a correction not yet checked counts as not verified), stop_reason "budget".
Vote `members` are solution indices (0-based, sample order); Refine's candidates
number every version: samples 0..m-1, then corrections m, m+1, ... in the order made.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.runtime import Runtime
from pydantic import Field, model_validator

from refinegraph.agents.corrector import correct_solution
from refinegraph.agents.sampler import sample_answers
from refinegraph.agents.verifier import verify_solution
from refinegraph.context import RunContext
from refinegraph.events import Refine, Stop, Vote
from refinegraph.graphs.consistency import AnswerParams
from refinegraph.registry import register_graph
from refinegraph.tools.answers import display, get_projection
from refinegraph.tools.voting import majority_vote
from refinegraph.wiring import MethodGraph


class SetsParams(AnswerParams):
    m: int = Field(4, ge=1, le=64)
    """Solutions sampled."""
    r: int = Field(2, ge=0, le=10)
    """Most corrections per solution."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    verifier_max_tokens: int = Field(128, ge=24)
    corrector_temperature: float = Field(0.0, ge=0.0, le=2.0)

    @classmethod
    def schema_rules(cls, defaults: dict[str, Any]) -> list[dict[str, Any]]:
        """The step limit below as JSON Schema (the server's OpenAPI document): for each r,
        the largest m; `defaults` stand for a field the request leaves out."""
        from refinegraph.compiled import RECURSION_LIMIT

        def most_m(r: int) -> int:
            return (RECURSION_LIMIT - 4) // (2 * r + 1)

        r_field = cls.model_fields["r"]
        highest_r = next(m.le for m in r_field.metadata if getattr(m, "le", None) is not None)
        cases = []
        for r in [None, *range(highest_r + 1)]:
            cap = most_m(defaults["r"] if r is None else r)
            if cap < 1:
                continue
            case: dict[str, Any] = {"properties": {"m": {"maximum": cap}}}
            case["required"] = [] if r is None else ["r"]
            if r is None:
                case["not"] = {"required": ["r"]}
            else:
                case["properties"]["r"] = {"const": r}
            if defaults["m"] > cap:
                case["required"].append("m")
            cases.append(case)
        return [{"anyOf": cases}]

    @model_validator(mode="after")
    def _fits_the_step_limit(self) -> SetsParams:
        """Each verdict and correction is a graph step; the runner caps steps per run."""
        from refinegraph.compiled import RECURSION_LIMIT

        steps = self.m * (2 * self.r + 1) + 4
        if steps > RECURSION_LIMIT:
            raise ValueError(f"m={self.m}, r={self.r} needs up to {steps} graph steps; the limit is "
                             f"{RECURSION_LIMIT} (lower m or r)")
        return self


class SetsState(TypedDict, total=False):
    task: str
    params: dict[str, Any]
    solutions: list[dict[str, Any]]
    """One entry per sample: its latest version (text, answer, candidate, verified, reason, rounds)."""
    current: int
    versions: int
    pending: bool
    """Whether the current solution awaits a correction."""
    stop_reason: str
    vote: dict[str, Any]
    answer: str | None
    solution: str | None


def counted(solutions: list[dict[str, Any]]) -> list[float]:
    """Vote weights: 1 for a verified solution with a readable answer, 0 otherwise; all 1 when none is."""
    weights = [1.0 if s["verified"] is True and s["answer"] is not None else 0.0 for s in solutions]
    return weights if any(weights) else [1.0] * len(solutions)


async def finish(state: SetsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Vote over the final solutions (see the module docstring) and answer with the winner."""
    ctx = runtime.context
    solutions = state.get("solutions", [])
    outcome = majority_vote([s["answer"] for s in solutions], counted(solutions) if solutions else None)
    payload = outcome.as_event()
    ctx.emit(Vote(**payload))
    winner = payload["winner"]
    reason = state.get("stop_reason") or ("done" if winner is not None or not solutions else "no_answer")
    chosen = outcome.winner.members[0] if outcome.winner else None
    ctx.emit(Stop(reason=reason, chosen=chosen))
    solution = solutions[chosen]["text"] if chosen is not None else (solutions[0]["text"] if solutions else None)
    return {"vote": payload, "answer": display(winner, state["params"]["answer"]), "solution": solution,
            "stop_reason": reason}


def build_sets(params: dict[str, Any] | None = None, *, checkpointer: Any = None) -> Any:
    """The compiled SETS graph. Input: {"task": str}; output adds answer, solution, vote, stop_reason."""
    settings = SetsParams.model_validate(params or {}).model_dump()
    project = get_projection(settings["answer"])

    async def sample(state: SetsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        samples = await sample_answers(runtime.context, state["task"], n=settings["m"],
                                       temperature=settings["temperature"], max_tokens=settings["max_tokens"],
                                       seed=settings["seed"], kind=settings["answer"])
        solutions = [{"text": s["text"], "answer": s["answer"], "candidate": s["index"], "verified": None,
                      "reason": "", "rounds": 0} for s in samples]
        return {"solutions": solutions, "versions": len(solutions), "current": 0}

    async def verify(state: SetsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        index = state["current"]
        solutions = list(state["solutions"])
        current = solutions[index]
        verdict = await verify_solution(runtime.context, state["task"], current["text"],
                                        subject=f"solution {index} round {current['rounds']}",
                                        max_tokens=settings["verifier_max_tokens"], seed=settings["seed"])
        solutions[index] = {**current, "verified": verdict["correct"], "reason": verdict["reason"]}
        if verdict["correct"] is not True and current["rounds"] < settings["r"]:
            return {"solutions": solutions, "pending": True}
        return {"solutions": solutions, "pending": False, "current": index + 1}

    async def correct(state: SetsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        index = state["current"]
        solutions = list(state["solutions"])
        current = solutions[index]
        text = await correct_solution(runtime.context, state["task"], current["text"], current["reason"],
                                      max_tokens=settings["max_tokens"],
                                      temperature=settings["corrector_temperature"], seed=settings["seed"])
        rounds = current["rounds"] + 1
        candidate = state["versions"]
        runtime.context.emit(Refine(iteration=rounds, from_candidate=current["candidate"], to_candidate=candidate))
        solutions[index] = {"text": text, "answer": project(text), "candidate": candidate, "verified": None,
                            "reason": "", "rounds": rounds}
        return {"solutions": solutions, "versions": candidate + 1, "pending": False}

    def after_sample(state: SetsState) -> str:
        return "finish" if state.get("stop_reason") or not state.get("solutions") else "verifier"

    def after_verify(state: SetsState) -> str:
        if state.get("stop_reason"):
            return "finish"
        if state.get("pending"):
            return "corrector"
        return "verifier" if state["current"] < len(state["solutions"]) else "finish"

    graph = MethodGraph(SetsState, settings, start={"solutions": [], "current": 0, "versions": 0, "pending": False})
    graph.node("sampler", sample, budget=True)
    graph.node("verifier", verify, budget=True)
    graph.node("corrector", correct, budget=True)
    graph.node("finish", finish)
    graph.branch("sampler", after_sample, ["verifier", "finish"])
    graph.branch("verifier", after_verify, ["verifier", "corrector", "finish"])
    graph.unless_stopped("corrector", "verifier")
    return graph.compile(checkpointer, name="sets")


def register() -> None:
    register_graph("sets", build_sets,
                   "SETS: sample m solutions, verify and correct each up to r rounds, vote over the verified",
                   params=SetsParams, sets=("solution", "vote"))


register()
