"""Starting vLLM's OpenAI-compatible server as a subprocess (tests, benchmarks, local use).

refinegraph talks to it with the `openai` backend. vLLM's CPU build fails under
`vllm serve`, so the server is started as `python -m vllm.entrypoints.openai.api_server`,
which works on both builds. It runs in its own process group, so stopping it stops the
engine-core processes it forks as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinegraph.procs import ProcessExited, free_port, stop, wait_http_ok


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


def server_flags(engine_args: dict[str, Any]) -> list[str]:
    """vLLM's server flags for engine arguments, so the server runs with the engine's settings.

    True is `--key-name`, False `--no-key-name` (vLLM's boolean flags take both forms), a dict
    or list is JSON (what vLLM parses), anything else its str()."""
    flags: list[str] = []
    for key, value in engine_args.items():
        name = key.replace("_", "-")
        if value is True:
            flags.append(f"--{name}")
        elif value is False:
            flags.append(f"--no-{name}")
        elif isinstance(value, dict | list):
            flags += [f"--{name}", json.dumps(value)]
        else:
            flags += [f"--{name}", str(value)]
    return flags


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-3000:] if path.exists() else ""


@contextlib.contextmanager
def vllm_server(model: str, log_path: Path, *, served_name: str = "model", args: tuple[str, ...] = (),
                timeout_s: float = 600.0, env: dict[str, str] | None = None,
                python: str = sys.executable) -> Iterator[VLLMServer]:
    """vLLM's server on a free loopback port for the block's duration (stopped after, with its children)."""
    port = free_port()
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), *args]
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/health", process, timeout_s)
        except ProcessExited as exc:
            raise VLLMServerError(f"vLLM's server exited with {exc.returncode}:\n{_tail(log_path)}") from None
        except TimeoutError:
            raise VLLMServerError(f"vLLM's server did not come up in {timeout_s:.0f} s:\n{_tail(log_path)}") from None
        yield VLLMServer(f"http://127.0.0.1:{port}/v1", served_name, process, time.monotonic() - started, log_path)
    finally:
        stop(process)
