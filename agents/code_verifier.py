"""Code verifier: runs each candidate program against the task's tests in the sandbox.

A candidate's program is the task's prompt, its code and the tests, ending in
`check(entry_point)` (HumanEval's shape; tools.code.programs). It passes when that
program exits 0. Every run is a `code_exec` event (status, isolation, exit code,
digests and the ends of stdout and stderr, the message); a sandbox weaker than
bubblewrap, or none at all, is a recorded fallback. Nothing the program does raises.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from refinegraph.context import RunContext
from refinegraph.events import CodeExec
from refinegraph.tools.code import CodeResult, arun_python, program_with_tests

Outcome = Literal["passed", "failed", "crashed"]
TEXT_CHARS = 2000


def outcome_of(result: CodeResult) -> Outcome:
    """passed: exit 0; failed: it ran and a test's assert said no; crashed: anything else
    (a syntax error, another exception, a timeout, memory, no sandbox)."""
    if result.status == "ok":
        return "passed"
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if result.status == "error" and lines and lines[-1].startswith("AssertionError"):
        return "failed"
    return "crashed"


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


def record(ctx: RunContext, index: int, program: str, result: CodeResult, passed: bool) -> None:
    """The `code_exec` event of one run."""
    ctx.emit(CodeExec(candidate=index, status=result.status, passed=passed, isolation=result.isolation,
                      exit_code=result.exit_code, signal=result.signal, message=result.message[:1000],
                      program_blob=ctx.writer.put_blob({"program": program}), program_digest=_digest(program),
                      stdout=result.stdout[:TEXT_CHARS], stderr=result.stderr[-TEXT_CHARS:],
                      stdout_digest=_digest(result.stdout), stderr_digest=_digest(result.stderr),
                      truncated=result.stdout_truncated or result.stderr_truncated,
                      elapsed_ms=round(result.duration_s * 1000, 3)))


async def run_tests(ctx: RunContext, codes: list[str], *, prompt: str, tests: str, entry_point: str,
                    sandbox: dict[str, Any]) -> list[dict[str, Any]]:
    """Each candidate's code against the tests, one after another (the machine's cores are
    the limit, and the trace's order is the candidates'). `sandbox` holds run_python's
    keywords (timeout_s, memory_mb, ...). Returns, per candidate: index, shape, status,
    outcome, passed, message."""
    checked: list[dict[str, Any]] = []
    warned = False
    for index, code in enumerate(codes):
        program, shape = program_with_tests(prompt, code, tests, entry_point)
        result = await arun_python(program, **sandbox)
        if not warned and (result.isolation_note or result.status == "sandbox_unavailable"):
            warned = True
            if result.status == "sandbox_unavailable":
                ctx.fallback("sandbox_unavailable", "no candidate could run: nothing is verified", result.message)
            else:
                ctx.fallback("sandbox_rlimits_only", "programs run without bubblewrap's isolation",
                             result.isolation_note)
        outcome = outcome_of(result)
        record(ctx, index, program, result, outcome == "passed")
        checked.append({"index": index, "shape": shape, "status": result.status, "outcome": outcome,
                        "passed": outcome == "passed", "message": result.message})
    return checked
