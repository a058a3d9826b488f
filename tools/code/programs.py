"""From a model's reply to a program: the code it wrote, and that code with its tests.

HumanEval's shape: the task is a function's signature and docstring (the prompt), the
model writes the body or the whole function, the tests define `check(candidate)`.
The candidate runs in its own module, the tests in main.py (CandidateProgram).
"""

from __future__ import annotations

import re
import secrets
import textwrap
from dataclasses import dataclass

from refinegraph.tools.code.limits import PROGRAM
from refinegraph.tools.code.result import CodeResult

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON = {"python", "py", "python3", ""}
_DEF = re.compile(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def extract_code(reply: str, entry_point: str | None = None) -> tuple[str, str]:
    """(code, how): the fenced block that defines `entry_point` if any, else the first
    Python (or untagged) block, else the first block of any language ("fenced"); with no
    fence, the reply itself ("raw"). An unclosed fence (a reply cut at max_tokens) runs
    to the end."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    if not blocks:
        return reply.strip("\n"), "raw"
    python = [body for lang, body in blocks if lang in _PYTHON] or [body for _, body in blocks]
    if entry_point:
        defining = [body for body in python if entry_point in defined_functions(body)]
        if defining:
            return defining[0].strip("\n"), "fenced"
    return python[0].strip("\n"), "fenced"


def defined_functions(code: str) -> list[str]:
    """Names of the functions defined at the top level of `code`, in order."""
    return _DEF.findall(code)


def entry_point_of(prompt: str) -> str | None:
    """The function a HumanEval prompt asks for: its last top-level def."""
    names = defined_functions(prompt)
    return names[-1] if names else None


SOLUTION = "solution.py"
"""The candidate's module in the work folder: the prompt and the candidate's code."""
SENTINEL_SLOT = "<end-of-tests marker>"
"""What stands for the per-run marker in the recorded main.py (so replays record the same text)."""
_HARNESS = (
    "import solution as _solution\n"
    "globals().update({{_k: _v for _k, _v in vars(_solution).items()\n"
    "                  if not (_k.startswith('__') and _k.endswith('__'))}})\n"
    "{tests}"
    "print({marker!r}, flush=True)\n"
)


@dataclass(frozen=True)
class CandidateProgram:
    """A candidate and its tests, as two files: solution.py (prompt + candidate) and main.py,
    which imports it, runs the tests and prints a random marker as its last act.

    The candidate's code runs as module `solution`, not as __main__, so its
    `if __name__ == "__main__":` block does not run; and exiting early (sys.exit(0),
    os._exit(0)) exits 0 without the marker, which is no pass. Code written to defeat its
    tests (reading main.py) can still print the marker: this guards mistakes, not malice.
    """

    main: str
    solution: str
    shape: str
    marker: str

    @property
    def files(self) -> dict[str, str]:
        return {SOLUTION: self.solution}

    def recorded(self) -> dict[str, str]:
        """Both files as a trace records them, the marker replaced by SENTINEL_SLOT."""
        return {PROGRAM: self.main.replace(self.marker, SENTINEL_SLOT), SOLUTION: self.solution}

    def judge(self, result: CodeResult) -> tuple[bool, CodeResult]:
        """(whether the tests ran to the end, the result with the marker taken out of stdout):
        exit 0 alone is not enough, the marker must have been printed too."""
        line = f"\n{self.marker}\n"
        head, found, tail = result.stdout.rpartition(line)
        finished = result.status == "ok" and bool(found)
        update: dict[str, str] = {"stdout": head + tail} if found else {}
        if result.status == "ok" and not found:
            update["message"] = ("exited 0 before the tests finished (no end-of-tests marker on stdout): the "
                                 "candidate's code ended the program early (sys.exit, os._exit)")
        return finished, result.model_copy(update=update)


def program_with_tests(prompt: str, code: str, tests: str, entry_point: str,
                       marker: str | None = None) -> CandidateProgram:
    """The program that runs the candidate against the tests (`marker`: random unless given).

    A candidate that defines `entry_point` itself ("function") follows the prompt, so the
    prompt's imports and helpers stay and the candidate's definition wins; a body
    ("body") is appended to the prompt, indented by four spaces when it is not. main.py
    takes every name of solution.py (underscored ones too, as when all was one module).
    """
    if entry_point in defined_functions(code):
        solution, shape = f"{prompt.rstrip()}\n\n\n{code}\n", "function"
    else:
        lines = [line for line in code.splitlines() if line.strip()]
        if lines and not lines[0][:1].isspace():
            code = textwrap.indent(code, "    ")
        solution, shape = f"{prompt.rstrip()}\n{code}\n", "body"
    checks = f"\n\n{tests.strip()}\n\n\ncheck({entry_point})\n" if tests.strip() else ""
    marker = marker or f"refinegraph-tests-done-{secrets.token_hex(16)}"
    main = _HARNESS.format(tests=checks, marker="\n" + marker)
    return CandidateProgram(main=main, solution=solution, shape=shape, marker=marker)
