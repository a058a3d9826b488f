"""Code verifier: runs each candidate program against the task's tests in the sandbox.

A candidate's program is two files (tools.code.programs): solution.py, the task's prompt
and its code, and main.py, which imports it, runs the tests and `check(entry_point)`
(HumanEval's shape) and prints a per-run marker last. It passes when it exits 0 with that
marker on stdout (taken out of the stdout recorded), so code that exits early, or whose
`__main__` block would have exited, does not pass untested. Every run is a `code_exec`
event (status, isolation, exit code, digests and the ends of stdout and stderr, the
message); a sandbox weaker than bubblewrap, or none at all, is a recorded fallback. Nothing the program does raises.
"""

from __future__ import annotations

from typing import Any, Literal

from refinegraph.context import RunContext
from refinegraph.events import CodeExec
from refinegraph.tools.code import CandidateProgram, CodeResult, arun_python, program_with_tests
from refinegraph.trace.chain import content_digest

Outcome = Literal["passed", "failed", "crashed"]
TEXT_CHARS = 2000


def outcome_of(result: CodeResult, *, finished: bool) -> Outcome:
    """passed: exit 0 and the tests ran to the end (`finished`, CandidateProgram.judge);
    failed: it ran and a test's assert said no; crashed: anything else (a syntax error,
    another exception, an early exit, a timeout, memory, no sandbox)."""
    if result.status == "ok" and finished:
        return "passed"
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if result.status == "error" and lines and lines[-1].startswith("AssertionError"):
        return "failed"
    return "crashed"


def _digest(text: str) -> str:
    return content_digest(text.encode("utf-8", errors="replace"))


def _storable(text: str) -> str:
    """The trace's JSON is UTF-8: a lone surrogate (a run refused for it) is kept as its escape."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def record(ctx: RunContext, index: int, program: CandidateProgram, result: CodeResult, passed: bool) -> None:
    """The `code_exec` event of one run: both files, the marker left out, so a replay records the same."""
    files = {name: _storable(text) for name, text in program.recorded().items()}
    shown = "".join(f"# --- {name} ---\n{text}" for name, text in sorted(files.items(), reverse=True))
    ctx.emit(CodeExec(candidate=index, status=result.status, passed=passed, isolation=result.isolation,
                      exit_code=result.exit_code, signal=result.signal, message=result.message[:1000],
                      program_blob=ctx.writer.put_blob({"program": shown, "files": files}),
                      program_digest=_digest(shown), stdout=result.stdout[:TEXT_CHARS],
                      stderr=result.stderr[-TEXT_CHARS:], stdout_digest=_digest(result.stdout),
                      stderr_digest=_digest(result.stderr),
                      truncated=result.stdout_truncated or result.stderr_truncated,
                      elapsed_ms=round(result.duration_s * 1000, 3)))


def _warn(ctx: RunContext, result: CodeResult) -> bool:
    """Record a sandbox weaker than bubblewrap, or none; whether there was one to record."""
    if result.status == "sandbox_unavailable":
        ctx.fallback("sandbox_unavailable", "no candidate could run: nothing is verified", result.message)
    elif result.isolation_note:
        ctx.fallback("sandbox_rlimits_only", "programs run without bubblewrap's isolation", result.isolation_note)
    else:
        return False
    return True


async def run_tests(ctx: RunContext, codes: list[str], *, prompt: str, tests: str, entry_point: str,
                    sandbox: dict[str, Any]) -> list[dict[str, Any]]:
    """Each candidate's code against the tests, one after another (the machine's cores are
    the limit, and the trace's order is the candidates'). `sandbox` holds run_python's
    keywords (timeout_s, memory_mb, ...). Returns, per candidate: index, shape, status,
    outcome, passed, message."""
    checked: list[dict[str, Any]] = []
    warned = False
    for index, code in enumerate(codes):
        program = program_with_tests(prompt, code, tests, entry_point)
        finished, result = program.judge(await arun_python(program.main, files=program.files, **sandbox))
        warned = warned or _warn(ctx, result)
        outcome = outcome_of(result, finished=finished)
        record(ctx, index, program, result, outcome == "passed")
        checked.append({"index": index, "shape": program.shape, "status": result.status, "outcome": outcome,
                        "passed": outcome == "passed", "message": result.message})
    return checked
