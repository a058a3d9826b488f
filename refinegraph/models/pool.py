"""The `pool` backend: recorded outputs of other models, served as samples.

A pool file holds one JSON object per question (`question`, `samples` as
{source: [completion, ...]}, optionally `db_id`), such as the shared data/pools files. A
call is matched to its question by finding the question's text in the last user message
(the longest match wins; `db_id` breaks ties when the message names it), and is answered
with the next unused completions of the chosen sources: sampling without replacement from
what the recorded models said. A pool model is a named set of sources (`sources`); their
completions, source after source in the order given, are its samples.

Order: "recorded" serves them as recorded; "shuffle" serves a permutation seeded by
(`seed`, question), so a run's draw does not depend on which questions came before it.

Usage is an estimate, since nothing ran here and the recorded models' tokenizers are not
at hand: ceil(characters / 4) tokens for each completion, and for the prompt (all message
contents) once per call. The estimate is what the run charges to its budget and prices
(ModelSpec prices per Mtok), and the call's `server_usage` says it is one.

A completion longer than the call's max_tokens (by the estimate) is cut there and
finishes "length", as a live model's would: the run's budget, which lowers max_tokens to
what is left, binds on a pool as on a live model. Benchmarks give pool runs a max_tokens
above the longest recorded completion, so that only a budget cuts.

A source that the file never records is an error naming the ones it does (it would
otherwise answer "" to every question: 0% with no error).
A prompt with no recorded question (a critic's or a judge's prompt, say), or a request
for more samples than are left, raises PoolError; it is never retried (the retry policy
retries transport errors only), and the run fails with the message.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from refinegraph.config import ConfigError
from refinegraph.models.base import Samples, Usage

CHARS_PER_TOKEN = 4
_parsed: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]] = {}


class PoolError(LookupError):
    """The pool has no entry for this prompt, or not enough samples left for it."""


def estimate_tokens(text: str) -> int:
    """The documented usage estimate: ceil(characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _entries(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The file's entries by question text, parsed once per process (runs build a model each)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _parsed:
        entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    entry = json.loads(line)
                    entries[entry["question"].strip()].append(entry)
        _parsed[key] = dict(entries)
    return _parsed[key]


_sources: dict[int, frozenset[str]] = {}


def _recorded_sources(path: Path, entries: dict[str, list[dict[str, Any]]]) -> frozenset[str]:
    """Every source the file records (computed once per parsed file)."""
    if id(entries) not in _sources:
        _sources[id(entries)] = frozenset(name for group in entries.values() for e in group for name in e["samples"])
    return _sources[id(entries)]


class PoolModel:
    """Answers from recorded completions; see the module docstring."""

    backend = "pool"
    supports_json_schema = False

    def __init__(self, name: str, path: str | Path, sources: list[str] | None = None, *,
                 order: Literal["recorded", "shuffle"] = "recorded", seed: int = 0):
        if order not in ("recorded", "shuffle"):
            raise ValueError(f"pool order must be 'recorded' or 'shuffle', not {order!r}")
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"pool file not found: {self.path}")
        self.sources = sources
        self.order = order
        self.seed = seed
        self._entries = _entries(self.path)
        if sources:
            recorded = _recorded_sources(self.path, self._entries)
            unknown = [name for name in sources if name not in recorded]
            if unknown:
                raise PoolError(f"pool model {name!r}: {self.path.name} records no source "
                                f"{', '.join(map(repr, unknown))}; its sources: {', '.join(sorted(recorded))}")
        self._by_length = sorted(self._entries, key=len, reverse=True)
        self._used: dict[int, int] = defaultdict(int)

    def entries(self) -> list[dict[str, Any]]:
        """Every recorded question's entry, in no particular order."""
        return [entry for entries in self._entries.values() for entry in entries]

    def completions(self, entry: dict[str, Any]) -> list[str]:
        """The entry's completions from the chosen sources, in serving order.

        A chosen source with nothing recorded for this question answers "" (so one source
        keeps one place, and an empty answer gets no vote downstream)."""
        if not self.sources:
            texts = [text for source in sorted(entry["samples"]) for text in entry["samples"][source]]
        else:
            texts = [text for source in self.sources for text in (entry["samples"].get(source) or [""])]
        if self.order == "shuffle":
            random.Random(f"{self.seed}:{entry.get('id', entry['question'])}").shuffle(texts)
        return texts

    def find(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        text = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        for question in self._by_length:
            if question and question in text:
                candidates = self._entries[question]
                named = [e for e in candidates if e.get("db_id") and e["db_id"] in text]
                return (named or candidates)[0]
        raise PoolError(f"pool model {self.name!r} ({self.path.name}) holds no recorded question that appears "
                        f"in this prompt (a pool answers only the task prompts it recorded, not e.g. a critic's "
                        f"or a judge's): {text[:120]!r}")

    async def sample(self, messages, *, n=1, temperature=0.0, max_tokens=512, seed=None, stop=None,
                     response_format=None, logprobs=False) -> Samples:
        entry = self.find(messages)
        available = self.completions(entry)
        start = self._used[id(entry)]
        if start + n > len(available):
            which = ", ".join(self.sources) if self.sources else "all sources"
            raise PoolError(f"pool model {self.name!r} ({which}) has {len(available)} completions for this "
                            f"question ({start} used); {n} more were asked for (samples are drawn without "
                            f"replacement)")
        self._used[id(entry)] = start + n
        texts, finish = [], []
        for text in available[start:start + n]:
            # As a live model stops at max_tokens (which the run's budget lowers to what is
            # left), a recorded completion longer than that is cut there: budgets bind.
            if estimate_tokens(text) > max_tokens:
                texts.append(text[: max_tokens * CHARS_PER_TOKEN])
                finish.append("length")
            else:
                texts.append(text)
                finish.append("stop")
        tokens = [estimate_tokens(text) for text in texts]
        prompt = estimate_tokens("".join(str(m.get("content", "")) for m in messages))
        estimate = {"estimate": f"ceil(chars/{CHARS_PER_TOKEN})", "prompt_tokens": prompt,
                    "completion_tokens": sum(tokens)}
        return Samples(texts=texts, finish_reasons=finish, completion_tokens=tokens,
                       usage=Usage(prompt_tokens=prompt, completion_tokens=sum(tokens)), server_usage=[estimate],
                       model_id=f"pool:{self.path.name}")

    async def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        """The prompt tokens a call will be charged: the same estimate `sample` reports."""
        return estimate_tokens("".join(str(m.get("content", "")) for m in messages))

    async def aclose(self) -> None:
        return None


def build(name: str, spec: Any) -> PoolModel:
    """The "pool" backend of a config entry (refinegraph.backends.PoolSettings)."""
    if not spec.pool_file:
        raise ConfigError(f"model {name!r}: the pool backend needs pool_file")
    try:
        return PoolModel(name, spec.pool_file, spec.pool_sources, order=spec.pool_order, seed=spec.pool_seed)
    except FileNotFoundError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
