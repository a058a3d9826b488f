"""Starting vLLM's OpenAI-compatible server as a subprocess (tests, benchmarks, local use).

refinegraph talks to it with the `openai` backend. vLLM's CPU build fails under
`vllm serve`, so the server is started as `python -m vllm.entrypoints.openai.api_server`,
which works on both builds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from refinegraph.procs import free_port


class VLLMServerError(RuntimeError):
    """The server exited or did not come up; the message ends with its log's tail."""


@dataclass
class VLLMServer:
    base_url: str
    """The OpenAI base URL (…/v1)."""
    served_name: str
    process: subprocess.Popen
    load_seconds: float
    """From the start of the process to the first healthy /health."""
    log_path: Path


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-3000:] if path.exists() else ""


@contextlib.contextmanager
def vllm_server(model: str, log_path: Path, *, served_name: str = "model", args: tuple[str, ...] = (),
                timeout_s: float = 600.0, env: dict[str, str] | None = None,
                python: str = sys.executable) -> Iterator[VLLMServer]:
    """vLLM's server on a free loopback port for the block's duration (terminated after)."""
    port = free_port()
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), *args]
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        while True:
            if process.poll() is not None:
                raise VLLMServerError(f"vLLM's server exited with {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() - started > timeout_s:
                raise VLLMServerError(f"vLLM's server did not come up in {timeout_s:.0f} s:\n{_tail(log_path)}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.5)
        yield VLLMServer(f"http://127.0.0.1:{port}/v1", served_name, process, time.monotonic() - started, log_path)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
