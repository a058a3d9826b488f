"""Backends register like graphs (refinegraph.backends): each with its own settings class,
while a config entry keeps the keys it always had (ModelSpec reads the same TOML)."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from pydantic import ValidationError

from refinegraph import backends
from refinegraph.backends import BackendSettings, LocalSettings, PoolSettings, get_backend, register_backend
from refinegraph.config import Config, ConfigError, ModelSpec, load_config
from refinegraph.models import ScriptedModel, build_model

OLD_CONFIG = """
[models.small]
backend = "local"
n_parallel = 2
kv_cache_tokens = 4096
[models.api]
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"
extra_body = {top_k = 20}
max_n = 4
price_input_per_mtok = 0.5
[models.recorded]
backend = "pool"
pool_file = "pool.jsonl"
pool_sources = ["a", "b"]
[roles]
default = "small"
"""


def test_the_built_in_backends_are_registered_with_their_settings():
    assert {"local", "openai", "vllm", "pool", "reward", "langchain"} <= set(backends.backend_names())
    assert get_backend("local").settings is LocalSettings and get_backend("pool").settings is PoolSettings


def test_a_config_reads_the_same_keys_as_before(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(OLD_CONFIG)
    config = load_config(path)
    small, api, recorded = config.models["small"], config.models["api"], config.models["recorded"]
    assert (small.n_parallel, small.kv_cache_tokens, small.ctx_per_slot, small.timeout_s) == (2, 4096, 4096, 600.0)
    assert isinstance(small.settings, LocalSettings) and small.settings.n_parallel == 2
    assert (api.extra_body, api.max_n, api.count_tokens, api.timeout_s) == ({"top_k": 20}, 4, "auto", 120.0)
    assert recorded.pool_sources == ["a", "b"] and recorded.pool_order == "recorded"
    # a dump reads back as the same entry
    assert ModelSpec.model_validate(small.model_dump()) == small


def test_a_key_of_another_backend_is_an_error_naming_the_backend():
    with pytest.raises(ValidationError, match="backend 'openai': pool_file"):
        ModelSpec(backend="openai", base_url="http://x/v1", model="m", pool_file="p.jsonl")
    with pytest.raises(ValidationError, match="backend 'local': n_paralel"):
        ModelSpec(n_paralel=2)
    with pytest.raises(ValidationError, match="unknown backend 'nope'"):
        ModelSpec(backend="nope")


def test_a_config_file_with_a_misspelt_key_fails_to_load(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(OLD_CONFIG.replace("n_parallel", "n_paralel"))
    with pytest.raises(ConfigError, match="n_paralel"):
        load_config(path)
    assert tomllib.loads(OLD_CONFIG)  # the fixture itself is TOML


def test_a_new_backend_is_one_settings_class_and_one_line(monkeypatch):
    monkeypatch.setattr(backends, "_backends", dict(backends._backends))

    class EchoSettings(BackendSettings):
        greeting: str = "hello"

    def build(name: str, spec: Any) -> ScriptedModel:
        return ScriptedModel(lambda messages: f"{spec.greeting}, {messages[-1]['content']}", name=name)

    register_backend("echo", EchoSettings, build)
    config = Config(models={"echo": ModelSpec(backend="echo", greeting="hi")}, roles={"default": "echo"})
    model = build_model("echo", config.spec("echo"))
    assert isinstance(model, ScriptedModel) and config.spec("echo").settings == EchoSettings(greeting="hi")
    with pytest.raises(ValidationError, match="backend 'echo': n_parallel"):
        ModelSpec(backend="echo", n_parallel=2)
