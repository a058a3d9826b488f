"""The replay cache: recorded samples keyed by (model, messages, sampling, seed, sample index)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from refinegraph.trace.chain import canonical_json


@dataclass(frozen=True)
class CachedSample:
    text: str
    finish_reason: str | None
    tokens: int
    prompt_tokens: int = 0
    """The call's prompt tokens, carried by its first sample only."""
    cached_prompt_tokens: int = 0


def sample_keys(model: str, messages: list[dict[str, Any]], params: dict[str, Any], n: int) -> list[str]:
    """The keys of samples 0..n-1 of one call. `params` holds temperature, max_tokens, stop,
    response_format, logprobs and seed; n is not part of it, so one n=4 call and the
    first four samples of an n=8 call share entries. The call is serialized once."""
    call = hashlib.sha256(canonical_json({"model": model, "messages": messages, "params": params}).encode())
    keys = []
    for index in range(n):
        h = call.copy()
        h.update(f"#sample:{index}".encode())
        keys.append(h.hexdigest())
    return keys


class ReplayCache:
    """Samples a run may reuse instead of calling a model (replay, and resume)."""

    def __init__(self) -> None:
        self._entries: dict[str, CachedSample] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedSample | None:
        return self._entries.get(key)

    def put(self, key: str, sample: CachedSample) -> None:
        self._entries[key] = sample

    def put_call(self, keys: list[str], texts: list[str], finish_reasons: list[str | None],
                 choice_tokens: list[int], prompt_tokens: int, cached_prompt_tokens: int) -> None:
        """One call's samples; the first carries the call's prompt tokens."""
        tokens = choice_tokens or [0] * len(texts)
        for i, (key, text, reason, count) in enumerate(zip(keys, texts, finish_reasons, tokens)):
            first = i == 0
            self.put(key, CachedSample(text, reason, count, prompt_tokens if first else 0,
                                       cached_prompt_tokens if first else 0))

    def put_samples(self, keys: list[str], samples: Any) -> None:
        self.put_call(keys, samples.texts, samples.finish_reasons, samples.completion_tokens,
                      samples.usage.prompt_tokens, samples.usage.cached_prompt_tokens)

    @classmethod
    def from_trace(cls, store: Any, run_id: str) -> ReplayCache:
        """Every sample the run's llm_call events recorded."""
        cache = cls()
        for event in store.events(run_id, types={"llm_call"}):
            response = store.get_blob(event["response_blob"])
            cache.put_call(event["cache_keys"], response["texts"], response["finish_reasons"],
                           event.get("choice_tokens") or [], event.get("prompt_tokens", 0),
                           event.get("cached_prompt_tokens", 0))
        return cache
