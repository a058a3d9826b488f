"""Model backends behind one async protocol, and building them from the config.

Each backend is imported when it is first built or named (PEP 562): the openai SDK,
langchain-core and httpx cost a second of start-up that `refinegraph --help` must not pay.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from refinegraph.trace.redact import register_secret, register_url_secrets

if TYPE_CHECKING:
    from refinegraph.config import ModelSpec
    from refinegraph.models.base import Model, ModelError, ModelUnavailable, Samples, Usage
    from refinegraph.models.langchain_backend import LangChainModel
    from refinegraph.models.local import LocalModel
    from refinegraph.models.openai_backend import OpenAIModel
    from refinegraph.models.pool import PoolError, PoolModel
    from refinegraph.models.reward_server import RewardServerModel
    from refinegraph.models.scripted import ScriptedModel
    from refinegraph.models.vllm_backend import VLLMEngineModel

_LAZY = {
    "Model": "base",
    "ModelError": "base",
    "ModelUnavailable": "base",
    "Samples": "base",
    "Usage": "base",
    "LangChainModel": "langchain_backend",
    "LocalModel": "local",
    "OpenAIModel": "openai_backend",
    "PoolError": "pool",
    "PoolModel": "pool",
    "RewardServerModel": "reward_server",
    "ScriptedModel": "scripted",
    "VLLMEngineModel": "vllm_backend",
}

__all__ = [
    "LangChainModel",
    "LocalModel",
    "Model",
    "ModelError",
    "ModelUnavailable",
    "OpenAIModel",
    "PoolError",
    "PoolModel",
    "RewardServerModel",
    "Samples",
    "ScriptedModel",
    "Usage",
    "VLLMEngineModel",
    "build_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value



def _env_key(spec: ModelSpec) -> str | None:
    """The model's API key from its `api_key_env`, registered as a secret so that no trace
    or log keeps it (e.g. a server's error message that echoes it)."""
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    register_secret(key)
    return key


def build_model(name: str, spec: ModelSpec) -> Model:
    """A backend instance for a configured model (nothing is started until first use)."""
    from refinegraph.config import ConfigError
    register_url_secrets(spec.base_url)  # a password in it is redacted wherever it appears
    if spec.backend == "local":
        from refinegraph.models.local import LocalModel
        return LocalModel(name, model=spec.model, model_path=spec.model_path, n_parallel=spec.n_parallel,
                          ctx_per_slot=spec.ctx_per_slot, threads=spec.threads, timeout=spec.timeout_s,
                          kv_cache_tokens=spec.kv_cache_tokens or None, kv_cache_type=spec.kv_cache_type,
                          batch_size=spec.batch_size, ubatch_size=spec.ubatch_size, mmap=spec.mmap)
    if spec.backend == "openai":
        if not spec.base_url or not spec.model:
            raise ConfigError(f"model {name!r}: the openai backend needs base_url and model")
        api_key = _env_key(spec)
        if spec.api_key_env and api_key is None:
            raise ConfigError(f"model {name!r}: environment variable {spec.api_key_env} is not set")
        from refinegraph.models.openai_backend import OpenAIModel
        return OpenAIModel(name, base_url=spec.base_url, model=spec.model, api_key=api_key,
                           max_n=spec.max_n, timeout=spec.timeout_s,
                           supports_json_schema=spec.supports_json_schema,
                           count_tokens=spec.count_tokens, extra_body=spec.extra_body)
    if spec.backend == "reward":
        if not spec.base_url or not spec.model:
            raise ConfigError(f"model {name!r}: the reward backend needs base_url and model")
        api_key = _env_key(spec)
        from refinegraph.models.reward_server import RewardServerModel
        return RewardServerModel(name, spec.base_url, spec.model, api_key=api_key, timeout=spec.timeout_s)
    if spec.backend == "langchain":
        api_key = _env_key(spec)
        if spec.api_key_env and api_key is None:
            raise ConfigError(f"model {name!r}: environment variable {spec.api_key_env} is not set")
        from refinegraph.models.langchain_backend import build_langchain_model
        return build_langchain_model(name, spec, api_key)
    if spec.backend == "pool":
        if not spec.pool_file:
            raise ConfigError(f"model {name!r}: the pool backend needs pool_file")
        from refinegraph.models.pool import PoolModel
        try:
            return PoolModel(name, spec.pool_file, spec.pool_sources, order=spec.pool_order, seed=spec.pool_seed)
        except FileNotFoundError as exc:
            raise ConfigError(f"model {name!r}: {exc}") from None
    if spec.backend == "vllm":
        if not spec.model:
            raise ConfigError(f"model {name!r}: the vllm backend needs model (a path or a model id)")
        from refinegraph.models.vllm_backend import VLLMEngineModel
        return VLLMEngineModel(name, model=spec.model, engine_args=spec.engine_args)
    raise ConfigError(f"model {name!r}: unknown backend {spec.backend!r}")
