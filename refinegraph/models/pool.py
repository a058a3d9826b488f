"""The `pool` backend: recorded outputs of other models, served as samples.

A pool file holds one JSON object per question (`question`, `samples` as
{source: [completion, ...]}, optionally `db_id`), such as the shared data/pools files. A
call is matched to its question by finding the question's text in the last user message
(the longest match wins; `db_id` breaks ties when the message names it), and is answered
with the next unused completions of the chosen sources, in order: sampling without
replacement from what the recorded models said. Usage is zero (nothing ran).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from refinegraph.models.base import Samples, Usage


class PoolError(LookupError):
    """The pool has no entry for this prompt, or not enough samples left for it."""


class PoolModel:
    """Answers from recorded completions; see the module docstring."""

    backend = "pool"
    supports_json_schema = False

    def __init__(self, name: str, path: str | Path, sources: list[str] | None = None):
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"pool file not found: {self.path}")
        self.sources = sources
        self._entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line)
                self._entries[entry["question"].strip()].append(entry)
        self._by_length = sorted(self._entries, key=len, reverse=True)
        self._used: dict[int, int] = defaultdict(int)

    def completions(self, entry: dict[str, Any]) -> list[str]:
        """The entry's completions from the chosen sources, sources in the order given.

        A chosen source with nothing recorded for this question answers "" (so one source
        keeps one place, and an empty answer gets no vote downstream)."""
        if not self.sources:
            return [text for source in sorted(entry["samples"]) for text in entry["samples"][source]]
        return [text for source in self.sources for text in (entry["samples"].get(source) or [""])]

    def find(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        text = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        for question in self._by_length:
            if question and question in text:
                candidates = self._entries[question]
                named = [e for e in candidates if e.get("db_id") and e["db_id"] in text]
                return (named or candidates)[0]
        raise PoolError(f"no question of pool {self.path.name} appears in the prompt: {text[:120]!r}")

    async def sample(self, messages, *, n=1, temperature=0.0, max_tokens=512, seed=None, stop=None,
                     response_format=None, logprobs=False) -> Samples:
        entry = self.find(messages)
        available = self.completions(entry)
        start = self._used[id(entry)]
        if start + n > len(available):
            raise PoolError(f"pool {self.path.name} has {len(available)} completions for this question "
                            f"({start} used); {n} more were asked for")
        self._used[id(entry)] = start + n
        texts = available[start:start + n]
        return Samples(texts=texts, finish_reasons=["stop"] * n, completion_tokens=[0] * n, usage=Usage(),
                       model_id=f"pool:{self.path.name}")

    async def aclose(self) -> None:
        return None
