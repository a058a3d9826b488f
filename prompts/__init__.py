"""Prompt templates as text files, one per role, with a small loader.

A file holds a `### system` section and a `### user` section; placeholders are
`$name` (string.Template), so JSON examples need no escaping.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.resources import files
from string import Template
from typing import Any


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: str

    def render(self, **values: Any) -> list[dict[str, str]]:
        """Chat messages with every placeholder filled (a missing one is an error)."""
        messages = []
        if self.system:
            messages.append({"role": "system", "content": Template(self.system).substitute(values)})
        messages.append({"role": "user", "content": Template(self.user).substitute(values)})
        return messages


@functools.cache
def load_prompt(name: str) -> Prompt:
    """The prompt of one role, read from `<name>.txt` in this package."""
    resource = files(__package__).joinpath(f"{name}.txt")
    if not resource.is_file():
        raise FileNotFoundError(f"no prompt file {name}.txt in refinegraph.prompts")
    sections: dict[str, list[str]] = {"system": [], "user": []}
    current = None
    for line in resource.read_text(encoding="utf-8").splitlines():
        header = line.strip().lower()
        if header in ("### system", "### user"):
            current = header[4:]
            continue
        if current is not None:
            sections[current].append(line)
    return Prompt(name, "\n".join(sections["system"]).strip(), "\n".join(sections["user"]).strip())
