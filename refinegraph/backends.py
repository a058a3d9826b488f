"""Model backends register here by name, as graphs do in refinegraph.registry.

A backend is a name bound to a `Backend`: its settings (a pydantic model of the keys its
config entry may carry besides the common ones of refinegraph.config.ModelSpec: backend,
base_url, model, api_key_env, timeout_s, max_n, supports_json_schema, prices, retry) and
a builder `build(name, spec) -> Model` (refinegraph.models.base.Model). A config entry

    [models.fast]
    backend = "openai"
    base_url = "http://127.0.0.1:8000/v1"
    model = "qwen"
    extra_body = {top_k = 20}

is checked when the config is read: the common keys by ModelSpec, the rest by the
backend's settings (an unknown key is an error naming the backend); `spec.settings` is the
checked settings object, and each setting also reads as `spec.<key>`.

A new backend is one file and one line: the file holds its settings class, its Model
class and its builder; the line registers them, `register_backend("name", Settings,
build)`, run from the file itself or from an entry point of the `refinegraph.backends`
group (a callable that registers), so that config files can name it. docs/extending.md
writes one. The built-in backends' settings are below, their builders named
"module:function" and imported only when a model of theirs is built, so that reading a
config never imports a transport (the openai SDK, llama.cpp, vLLM, langchain).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Builder = Callable[[str, Any], Any]
"""build(name, spec: ModelSpec) -> Model"""


class BackendSettings(BaseModel):
    """What a backend's config entry carries besides ModelSpec's common keys."""

    model_config = ConfigDict(extra="forbid")

    default_timeout_s: ClassVar[float | None] = None
    """The backend's timeout when the entry sets none (None: ModelSpec's default)."""


class UnknownBackend(ValueError):
    """A backend name nobody registered; the message lists the known ones."""


@dataclass(frozen=True)
class Backend:
    name: str
    settings: type[BackendSettings]
    build: Builder | str
    """The builder, or "module:function" naming it (imported when first needed)."""

    def build_model(self, name: str, spec: Any) -> Any:
        build = self.build
        if isinstance(build, str):
            module, _, attribute = build.partition(":")
            build = getattr(importlib.import_module(module), attribute)
        return build(name, spec)


_backends: dict[str, Backend] = {}
_loaded = False


def register_backend(name: str, settings: type[BackendSettings], build: Builder | str) -> Backend:
    """Bind `name` to a backend (a later registration of the name replaces the earlier)."""
    if not (isinstance(settings, type) and issubclass(settings, BackendSettings)):
        raise TypeError(f"backend {name!r}: settings must be a BackendSettings subclass, not {settings!r}")
    backend = Backend(name, settings, build)
    _backends[name] = backend
    return backend


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group="refinegraph.backends"):
        if entry.name not in _backends:
            entry.load()()


def get_backend(name: str) -> Backend:
    if name not in _backends:
        _load()
    if name not in _backends:
        raise UnknownBackend(f"unknown backend {name!r}; known backends: {', '.join(backend_names())}")
    return _backends[name]


def backend_names() -> list[str]:
    _load()
    return sorted(_backends)


# -- the built-in backends --------------------------------------------------------------

LOCAL_TIMEOUT_S = 600.0


class LocalSettings(BackendSettings):
    """backend "local": llama.cpp's server in-process (refinegraph.models.local)."""

    default_timeout_s: ClassVar[float | None] = LOCAL_TIMEOUT_S
    """A CPU model on a busy machine can take minutes on one long prompt; a retry after a
    timeout only queues the same work again on the same server."""

    n_parallel: int = Field(8, ge=1, le=256)
    ctx_per_slot: int = Field(4096, ge=256)
    """Each slot's own cache when kv_cache_tokens is 0."""
    threads: int | None = None
    model_path: str | None = None
    """A GGUF file to run (else `model` names a packaged model: smollm2-135m,
    qwen2.5-coder-1.5b, qwen2.5-coder-0.5b; neither: the default, see refinegraph.models.local)."""
    kv_cache_tokens: int = Field(6144, ge=0)
    """Tokens of the KV cache all slots share (0: ctx_per_slot per slot, reserved up front)."""
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "q8_0"
    batch_size: int | None = Field(None, ge=1)
    ubatch_size: int | None = Field(None, ge=1)
    mmap: bool = False
    """Map the GGUF file instead of reading it (see refinegraph.models.local)."""


class OpenAISettings(BackendSettings):
    """backend "openai": any OpenAI-compatible server (refinegraph.models.openai_backend)."""

    count_tokens: Literal["auto", "usage", "tokenize"] = "auto"
    """auto: count each choice with /tokenize when the server is llama.cpp (its usage counts
    one choice when n > 1), else trust the server's usage."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Fields added to every request body (vLLM's server: top_k, repetition_penalty,
    structured_outputs, ...)."""


class RewardSettings(BackendSettings):
    """backend "reward": a reward model behind vLLM's /pooling endpoint (base_url, model), for scorers."""


class VLLMSettings(BackendSettings):
    """backend "vllm": vLLM's engine in-process; `model` is the model's path or id."""

    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of vLLM's AsyncEngineArgs (dtype, max_model_len,
    gpu_memory_utilization, tensor_parallel_size, seed, ...)."""


class PoolSettings(BackendSettings):
    """backend "pool": recorded outputs of other models (refinegraph.models.pool)."""

    pool_file: str | None = None
    """A file of recorded outputs."""
    pool_sources: list[str] | None = None
    """Which recorded models to serve, in order (default: all, sorted)."""
    pool_order: Literal["recorded", "shuffle"] = "recorded"
    """Serve completions as recorded, or in a permutation seeded by pool_seed."""
    pool_seed: int = 0


class LangChainSettings(BackendSettings):
    """backend "langchain": any langchain-core chat model (refinegraph.models.langchain_backend)."""

    langchain_class: str | None = None
    """The chat model class, "package.module:ClassName" (or dotted), e.g. "langchain_openai:ChatOpenAI"."""
    langchain_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the class (model, base_url, api_key, ...)."""
    langchain_native_n: bool = False
    """Send n in one request (models with an `n` field, e.g. ChatOpenAI)."""


register_backend("local", LocalSettings, "refinegraph.models.local:build")
register_backend("openai", OpenAISettings, "refinegraph.models.openai_backend:build")
register_backend("reward", RewardSettings, "refinegraph.models.reward_server:build")
register_backend("vllm", VLLMSettings, "refinegraph.models.vllm_backend:build")
register_backend("pool", PoolSettings, "refinegraph.models.pool:build")
register_backend("langchain", LangChainSettings, "refinegraph.models.langchain_backend:build")
