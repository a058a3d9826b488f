"""The `openai` backend in front of a real llama.cpp server counts every choice (issue 16, point 8).

llama.cpp's `usage` counts one choice when n > 1; before the fix the backend split that one
figure over n choices, so 8 samples cost what 1 did in every report."""

from __future__ import annotations

import httpx
import pytest

from refinegraph.models import OpenAIModel
from refinegraph.models.local import ensure_server

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def llama_server() -> str:
    """The process's embedded llama.cpp server, spoken to as any OpenAI-compatible server."""
    address, _ = ensure_server()
    return address


async def tokenize(address: str, text: str) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{address}/tokenize", json={"content": text})
        return len(response.json()["tokens"])


async def test_openai_backend_counts_each_choice_behind_llama_cpp(llama_server):
    model = OpenAIModel("remote", base_url=f"{llama_server}/v1", model="any")
    try:
        samples = await model.sample([{"role": "user", "content": "Name a colour."}], n=4,
                                     temperature=1.0, max_tokens=24, seed=3)
    finally:
        await model.aclose()
    expected = [await tokenize(llama_server, t) + (r == "stop")
                for t, r in zip(samples.texts, samples.finish_reasons)]
    assert samples.completion_tokens == expected
    assert samples.usage.completion_tokens == sum(expected)
    # The server's own figure is one choice's, far below the four choices' sum.
    assert samples.server_usage[0]["completion_tokens"] < sum(expected)


async def test_usage_counting_stays_available_when_asked(llama_server):
    model = OpenAIModel("remote", base_url=f"{llama_server}/v1", model="any", count_tokens="usage")
    try:
        samples = await model.sample([{"role": "user", "content": "Name a colour."}], n=3,
                                     temperature=1.0, max_tokens=12, seed=5)
    finally:
        await model.aclose()
    assert samples.usage.completion_tokens == samples.server_usage[0]["completion_tokens"]
