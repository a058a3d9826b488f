"""A batch's inputs: one JSON value a line, a task string or an object with the graph's input key."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BatchInputError(ValueError):
    """An input line that cannot be run; the message names the line."""


@dataclass(frozen=True)
class BatchInput:
    """One input: its id (given, or its position) and the graph input it becomes."""

    id: str
    input: dict[str, Any]


def parse_inputs(values: Iterable[Any], input_key: str, *, where: str = "input") -> list[BatchInput]:
    """Strings become {input_key: text}; objects keep their keys (less "id") and must hold
    `input_key`. Ids are the "id" given or the input's position (0, 1, ...); they must be unique."""
    items: list[BatchInput] = []
    seen: set[str] = set()
    for position, value in enumerate(values):
        label = f"{where} {position + 1}"
        if isinstance(value, str):
            ident, graph_input = str(position), {input_key: value}
        elif isinstance(value, dict):
            graph_input = {k: v for k, v in value.items() if k != "id"}
            ident = str(value["id"]) if value.get("id") is not None else str(position)
            if not str(graph_input.get(input_key, "")).strip():
                raise BatchInputError(f"{label}: the object has no {input_key!r} (the graph's input key)")
        else:
            raise BatchInputError(f"{label}: expected a JSON string (the task) or an object, "
                                  f"got {type(value).__name__}")
        if isinstance(value, str) and not value.strip():
            raise BatchInputError(f"{label}: the task is empty")
        if ident in seen:
            raise BatchInputError(f"{label}: id {ident!r} is used twice; ids must be unique")
        seen.add(ident)
        items.append(BatchInput(ident, graph_input))
    return items


def read_inputs(path: str | Path, input_key: str) -> list[BatchInput]:
    """The inputs of a JSONL file (blank lines skipped; ids default to the input's position)."""
    values = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    numbers = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise BatchInputError(f"{path}:{number}: not JSON ({exc.msg}); write a task as a JSON string, "
                                  "e.g. \"What is 2+2?\"") from None
        numbers.append(number)
    try:
        return parse_inputs(values, input_key, where="input")
    except BatchInputError as exc:
        # name the file line rather than the input's position
        message = str(exc)
        position = int(message.split(":", 1)[0].removeprefix("input "))
        raise BatchInputError(f"{path}:{numbers[position - 1]}:{message.split(':', 1)[1]}") from None
