"""From a model's reply to a program: the code it wrote, and that code with its tests.

HumanEval's shape: the task is a function's signature and docstring (the prompt), the
model writes the body or the whole function, the tests define `check(candidate)`.
"""

from __future__ import annotations

import re
import textwrap

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


def program_with_tests(prompt: str, code: str, tests: str, entry_point: str) -> tuple[str, str]:
    """(program, shape): the program that runs the candidate against the tests.

    A candidate that defines `entry_point` itself ("function") follows the prompt, so the
    prompt's imports and helpers stay and the candidate's definition wins; a body
    ("body") is appended to the prompt, indented by four spaces when it is not.
    """
    if entry_point in defined_functions(code):
        program, shape = f"{prompt.rstrip()}\n\n\n{code}\n", "function"
    else:
        lines = [line for line in code.splitlines() if line.strip()]
        if lines and not lines[0][:1].isspace():
            code = textwrap.indent(code, "    ")
        program, shape = f"{prompt.rstrip()}\n{code}\n", "body"
    if tests.strip():
        program += f"\n\n{tests.strip()}\n\n\ncheck({entry_point})\n"
    return program, shape
