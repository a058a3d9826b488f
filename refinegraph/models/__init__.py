"""Model backends behind one async protocol, and building them from the config.

Each backend is imported when it is first built or named (PEP 562): the openai SDK,
langchain-core and httpx cost a second of start-up that `refinegraph --help` must not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from refinegraph.trace.redact import register_url_secrets

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


def build_model(name: str, spec: ModelSpec) -> Model:
    """A backend instance for a configured model (nothing is started until first use): the
    builder its backend registered (refinegraph.backends)."""
    from refinegraph.backends import UnknownBackend, get_backend
    from refinegraph.config import ConfigError

    register_url_secrets(spec.base_url)  # a password in it is redacted wherever it appears
    try:
        backend = get_backend(spec.backend)
    except UnknownBackend as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
    return backend.build_model(name, spec)
