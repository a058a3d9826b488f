"""A scripted model: a TEST DOUBLE for control-flow tests.

It returns texts it was given, in order or from a function of the messages. It never
stands in for a backend in the product: the config cannot name it, only code can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from refinegraph.models.base import Samples, Usage

Responder = Callable[[list[dict[str, Any]]], str]


class ScriptedModel:
    """Test double: answers from a script, counting every call it receives."""

    backend = "scripted"
    supports_tools = True
    """It passes no tools anywhere: it records them (`tool_offers`); a script answers a tool
    call with refinegraph.tool_calls.encode(...)."""

    def __init__(
        self,
        script: Sequence[str] | Responder,
        *,
        name: str = "scripted",
        supports_json_schema: bool = True,
        stops_at_max_tokens: bool = False,
    ):
        self.name = name
        self.stops_at_max_tokens = stops_at_max_tokens
        """Cut each text at max_tokens words (finish "length"), as a live model stops."""
        self.supports_json_schema = supports_json_schema
        self._script = script
        self._position = 0
        self.calls: list[list[dict[str, Any]]] = []
        self.tool_offers: list[dict[str, Any] | None] = []

    def _next(self, messages: list[dict[str, Any]]) -> str:
        if callable(self._script):
            return self._script(messages)
        if self._position >= len(self._script):
            raise IndexError(f"scripted model {self.name!r} ran out of its {len(self._script)} texts")
        text = self._script[self._position]
        self._position += 1
        return text

    async def sample(self, messages, *, n=1, temperature=0.0, max_tokens=512, seed=None,
                     stop=None, response_format=None, logprobs=False, tools=None) -> Samples:
        self.calls.append(messages)
        self.tool_offers.append(tools)
        texts = [self._next(messages) for _ in range(n)]
        finish = ["stop"] * n
        if self.stops_at_max_tokens:
            for index, text in enumerate(texts):
                if len(text.split()) > max_tokens:
                    texts[index], finish[index] = " ".join(text.split()[:max_tokens]), "length"
        counts = [max(1, len(t.split())) for t in texts]
        prompt = _words(messages)
        return Samples(
            texts=texts,
            finish_reasons=finish,
            completion_tokens=counts,
            usage=Usage(prompt_tokens=prompt, completion_tokens=sum(counts)),
            model_id=self.name,
        )

    async def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        """The prompt tokens this double will charge (its tokenizer: one token a word)."""
        return _words(messages)

    async def aclose(self) -> None:
        return None


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages)
