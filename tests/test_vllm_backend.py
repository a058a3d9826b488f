"""The `vllm` backend without vLLM: config, defaults and the error a user sees (the engine
itself is exercised by tests/test_vllm.py, marker `vllm`)."""

from __future__ import annotations

import importlib.util

import pytest

from refinegraph import run
from refinegraph.config import Config, ConfigError, ModelSpec
from refinegraph.models import ModelUnavailable, VLLMEngineModel, build_model
from refinegraph.models.vllm_backend import _tokenizer, engine_defaults, structured_outputs
from refinegraph.models.vllm_server import server_flags


def test_config_builds_the_engine_backend_with_prefix_caching_on():
    model = build_model("engine", ModelSpec(backend="vllm", model="some/model", engine_args={"dtype": "bfloat16"}))
    assert isinstance(model, VLLMEngineModel) and model.backend == "vllm" and model.supports_json_schema
    assert model.engine_args == {"model": "some/model", "enable_prefix_caching": True, "dtype": "bfloat16"}
    assert engine_defaults("m", {"enable_prefix_caching": False})["enable_prefix_caching"] is False
    with pytest.raises(ConfigError, match="needs model"):
        build_model("engine", ModelSpec(backend="vllm"))
    with pytest.raises(ConfigError, match="must not hold 'model'"):
        build_model("engine", ModelSpec(backend="vllm", model="some/model", engine_args={"model": "other/model"}))


def test_server_flags_carry_every_engine_arg_as_vllm_parses_it():
    flags = server_flags({"max_model_len": 2048, "enforce_eager": True, "enable_prefix_caching": False,
                          "dtype": "float32", "hf_overrides": {"rope_theta": 1e6}, "allowed_origins": ["a", "b"]})
    assert flags == ["--max-model-len", "2048", "--enforce-eager", "--no-enable-prefix-caching",
                     "--dtype", "float32", "--hf-overrides", '{"rope_theta": 1000000.0}',
                     "--allowed-origins", '["a", "b"]']
    assert server_flags({}) == []


async def test_the_tokenizer_is_taken_from_sync_and_async_get_tokenizer():
    class Sync:
        def get_tokenizer(self):
            return "tok"

    class Async:
        async def get_tokenizer(self):
            return "tok"

    assert await _tokenizer(Sync()) == await _tokenizer(Async()) == "tok"


def test_response_formats_become_structured_outputs():
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}
    assert structured_outputs({"type": "json_schema", "json_schema": {"name": "v", "schema": schema}}) == {
        "json": schema}
    assert structured_outputs({"type": "json_object"}) == {"json_object": True}
    assert structured_outputs(None) is None and structured_outputs({"type": "text"}) is None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
async def test_without_vllm_a_run_fails_with_what_to_install(store):
    config = Config(models={"engine": ModelSpec(backend="vllm", model="some/model")}, roles={"default": "engine"})
    model = build_model("engine", config.models["engine"])
    with pytest.raises(ModelUnavailable, match="vllm-cpu-env.sh"):
        await model.sample([{"role": "user", "content": "hi"}])
    result = None
    with pytest.raises(Exception, match="vLLM is not installed") as failed:
        result = await run("greedy", "What is 2 + 2?", config=config, store=store)
    assert result is None
    run_id = failed.value.result.run_id  # a RunFailed: the run is recorded, its trace sealed
    assert store.run(run_id)["status"] == "error"
    assert store.events(run_id, types={"error"})[0]["error_class"] == "ModelUnavailable"
