"""The `reward` backend: a reward model behind vLLM's pooling endpoint, as a model.

`vllm serve <reward model> --runner pooling` answers `POST {root}/pooling`
`{"model": ..., "input": text}` with `{"data": [{"data": <output>}], "usage": {...}}`.
This backend sends the last user message as `input` and returns the raw `<output>` as
JSON text (one sample), so reward requests pass through the run's choke point like any
model call: budget, retries (timeouts, connection errors, 429, 5xx), the `llm_call`
event, replay and resume. Reading the output into scores is tools.reward's job.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from refinegraph.config import ConfigError
from refinegraph.models.base import Samples, Usage, api_key


class RewardServerModel:
    """A reward-model server; a trailing `/v1` of its base_url is dropped."""

    backend = "reward"
    supports_json_schema = False

    def __init__(self, name: str, base_url: str, model: str, *, api_key: str | None = None,
                 timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None):
        root = base_url.rstrip("/")
        self.name, self.model = name, model
        self.root = root[:-3] if root.endswith("/v1") else root
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport, headers=headers)

    async def sample(self, messages: list[dict[str, Any]], *, n: int = 1, **_: Any) -> Samples:
        if n != 1:
            raise ValueError(f"reward model {self.name!r} scores one input at a time (n={n})")
        text = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        response = await self._client.post(f"{self.root}/pooling", json={"model": self.model, "input": text})
        response.raise_for_status()
        body = response.json()
        try:
            output = body["data"][0]["data"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"reward model {self.name!r}: no data[0].data in its reply: {str(body)[:200]}") from exc
        usage = body.get("usage") or {}
        return Samples(texts=[json.dumps(output)], finish_reasons=["stop"], completion_tokens=[0],
                       usage=Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0)), server_usage=[usage],
                       model_id=self.model)

    async def aclose(self) -> None:
        await self._client.aclose()


def build(name: str, spec: Any) -> RewardServerModel:
    """The "reward" backend of a config entry (refinegraph.backends.RewardSettings)."""
    if not spec.base_url or not spec.model:
        raise ConfigError(f"model {name!r}: the reward backend needs base_url and model")
    return RewardServerModel(name, spec.base_url, spec.model, api_key=api_key(name, spec, required=False),
                             timeout=spec.timeout_s)
