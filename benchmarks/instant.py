"""An instant in-process model for measuring the framework's own cost.

It answers immediately with canned texts, so a run's time is the graph, the nodes and
refinegraph's bookkeeping, not a model. It is a benchmark fixture, not a backend: the
config cannot name it.

The responder is deterministic and stateless (keyed on the prompt's role and on the
answer under review), so every run takes the same path:
solver -> critic(5, revise) -> refiner -> critic(7, revise) -> refiner -> critic(9, done).
"""

from __future__ import annotations

import json
import re
from typing import Any

from refinegraph.models.base import Samples, Usage

# Score and verdict the critic gives to answer version k.
CRITIC_SCRIPT: tuple[tuple[int, str], ...] = ((5, "revise"), (7, "revise"), (9, "done"))
EXPECTED_ANSWER = "Answer version 2: 42, because 6 x 7 = 42."
_VERSION = re.compile(r"Answer version (\d+)")


def _answer_text(version: int) -> str:
    return f"Answer version {version}: 42, because 6 x 7 = 42."


def _version_in(text: str) -> int:
    found = _VERSION.findall(text)
    return int(found[-1]) if found else 0


def respond(messages: list[dict[str, Any]]) -> str:
    """The canned reply to one Self-Refine prompt, chosen by the role its system text names."""
    system = str(messages[0].get("content", "")) if messages else ""
    user = str(messages[-1].get("content", ""))
    if system.startswith("You are a strict reviewer"):
        score, verdict = CRITIC_SCRIPT[min(_version_in(user), len(CRITIC_SCRIPT) - 1)]
        return json.dumps({"correctness": score, "completeness": score, "clarity": score,
                           "score": score, "verdict": verdict,
                           "edits": [] if verdict == "done" else ["show the arithmetic"]})
    if system.startswith("You improve an answer"):
        current = user.split("Current answer:", 1)[-1]
        return _answer_text(_version_in(current) + 1)
    return _answer_text(0)


class InstantModel:
    """Implements the Model protocol; returns `respond(messages)` with no I/O and no wait."""

    backend = "instant"

    def __init__(self, name: str = "local", supports_json_schema: bool = True):
        self.name = name
        self.supports_json_schema = supports_json_schema
        self.calls = 0

    async def sample(self, messages: list[dict[str, Any]], *, n: int = 1, temperature: float = 0.0,
                     max_tokens: int = 512, seed: int | None = None, stop: list[str] | None = None,
                     response_format: dict[str, Any] | None = None, logprobs: bool = False) -> Samples:
        self.calls += 1
        text = respond(messages)
        tokens = max(1, len(text) // 4)
        prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4
        return Samples(texts=[text] * n, finish_reasons=["stop"] * n, completion_tokens=[tokens] * n,
                       usage=Usage(prompt_tokens=prompt, completion_tokens=tokens * n),
                       model_id=self.name)

    async def aclose(self) -> None:
        return None
