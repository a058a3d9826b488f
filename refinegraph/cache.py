"""The replay cache: recorded samples keyed by (model, messages, sampling parameters, seed,
occurrence, sample index).

The occurrence is which identical call of the run this is (0 for the first, 1 for the
next ...), so two identical requests are two independent draws, as they are at the
server; a replay makes the same calls in the same order and so finds the same keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from refinegraph.trace.chain import redacted_json


@dataclass(frozen=True)
class CachedSample:
    text: str
    finish_reason: str | None
    tokens: int
    prompt_tokens: int = 0
    """The call's prompt tokens, carried by its first sample only."""
    cached_prompt_tokens: int = 0


def call_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """What identifies a request. `params` holds temperature, the requested max_tokens (not
    a budget's cap of it), stop, response_format, logprobs and seed; n is not part of it.

    The key hashes the request as the trace stores it, secrets redacted: a replay re-runs
    from the recorded (redacted) input, so its requests hold `***` where the original's
    held a secret, and must still find the original's keys."""
    return hashlib.sha256(redacted_json({"model": model, "messages": messages, "params": params}).encode()).hexdigest()


def sample_keys(call: str, occurrence: int, n: int) -> list[str]:
    """The keys of samples 0..n-1 of the `occurrence`-th identical call of a run."""
    return [hashlib.sha256(f"{call}#{occurrence}#{index}".encode()).hexdigest() for index in range(n)]


class ReplayCache:
    """Samples a run may reuse instead of calling a model (replay, and resume)."""

    def __init__(self) -> None:
        self._entries: dict[str, CachedSample] = {}
        self.refusals: list[dict[str, Any]] = []
        """Budget events of the recorded run: a replay refuses where the original was refused."""
        self.failures: dict[str, dict[str, Any]] = {}
        """Model calls that failed for good, by their first sample key: a replay fails them alike."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedSample | None:
        return self._entries.get(key)

    def put(self, key: str, sample: CachedSample) -> None:
        self._entries[key] = sample

    def put_call(self, keys: list[str], texts: list[str], finish_reasons: list[str | None],
                 choice_tokens: list[int], prompt_tokens: int, cached_prompt_tokens: int) -> None:
        """One call's samples; the first carries the call's prompt tokens."""
        for i, (key, text, reason, count) in enumerate(zip(keys, texts, finish_reasons, choice_tokens,
                                                           strict=True)):
            first = i == 0
            self.put(key, CachedSample(text, reason, count, prompt_tokens if first else 0,
                                       cached_prompt_tokens if first else 0))

    def put_samples(self, keys: list[str], samples: Any) -> None:
        self.put_call(keys, samples.texts, samples.finish_reasons, samples.completion_tokens,
                      samples.usage.prompt_tokens, samples.usage.cached_prompt_tokens)

    @classmethod
    def from_trace(cls, store: Any, run_id: str) -> ReplayCache:
        """Every sample the run's llm_call events recorded (blobs checked against their digest),
        the budget refusals it recorded, in order, and the calls that failed."""
        cache = cls()
        for event in store.events(run_id, types={"llm_call", "budget", "error"}):
            if event["type"] == "budget":
                cache.refusals.append(event)
                continue
            if event["type"] == "error":
                if event.get("cache_keys"):
                    cache.failures[event["cache_keys"][0]] = event
                continue
            response = store.get_blob(event["response_blob"])
            cache.put_call(event["cache_keys"], response["texts"], response["finish_reasons"],
                           event["choice_tokens"], event["prompt_tokens"], event["cached_prompt_tokens"])
        return cache
