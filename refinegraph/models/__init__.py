"""Model backends behind one async protocol, and building them from the config."""

from __future__ import annotations

from refinegraph.backends import UnknownBackend, get_backend
from refinegraph.config import ConfigError, ModelSpec
from refinegraph.models.base import (
    Model,
    ModelError,
    ModelUnavailable,
    Samples,
    Usage,
)
from refinegraph.models.langchain_backend import LangChainModel
from refinegraph.models.local import LocalModel
from refinegraph.models.openai_backend import OpenAIModel
from refinegraph.models.pool import PoolError, PoolModel
from refinegraph.models.reward_server import RewardServerModel
from refinegraph.models.scripted import ScriptedModel
from refinegraph.models.vllm_backend import VLLMEngineModel
from refinegraph.trace.redact import register_url_secrets

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


def build_model(name: str, spec: ModelSpec) -> Model:
    """A backend instance for a configured model (nothing is started until first use): the
    builder its backend registered (refinegraph.backends)."""
    register_url_secrets(spec.base_url)  # a password in it is redacted wherever it appears
    try:
        backend = get_backend(spec.backend)
    except UnknownBackend as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
    return backend.build_model(name, spec)
