"""A deterministic OpenAI-compatible stub server that counts what it is asked: the model
behind the crash and store parts of `refinegraph bench reliability` (and their tests),
where replies must not depend on a model and every request must be counted.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"


# -- a counting OpenAI-compatible endpoint --------------------------------------------------------


def role_of(messages: list[dict[str, Any]]) -> str:
    """Which self-refine role a request plays, from its system prompt (prompts/*.txt)."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if "strict reviewer" in system:
        return "critic"
    if "improve an answer" in system:
        return "refiner"
    return "solver"


def stub_reply(body: dict[str, Any]) -> str:
    """A deterministic self-refine exchange (a test double for a model server): a draft,
    a "revise" verdict, a refined answer, a "done" verdict; texts derived from the request."""
    messages = body["messages"]
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:10]
    role = role_of(messages)
    if role == "critic":
        done = "refined answer" in messages[-1]["content"]
        score = 9 if done else 4
        return json.dumps({"correctness": score, "completeness": score, "clarity": score, "score": score,
                           "verdict": "done" if done else "revise", "edits": ["be more precise"]})
    return f"refined answer {digest}" if role == "refiner" else f"draft answer {digest}"


class _Server(ThreadingHTTPServer):
    """http.server's listen backlog is 5: 16 clients connecting at once overflowed it and
    some connections were reset (httpx.ReadError in `bench proxy` at concurrency 16)."""

    request_queue_size = 128


class CountingServer:
    """An OpenAI-compatible endpoint on loopback that counts chat requests as they arrive
    and as their answers are sent: it answers them itself (`respond`, a deterministic stub)
    or forwards them to `upstream` (e.g. the embedded llama.cpp server).

    `hold_from(k)`: from the k-th request on, requests wait (unanswered) until `release()`,
    so a kill lands with a known set of calls in flight.
    """

    def __init__(self, respond: Callable[[dict[str, Any]], str] | None = None, *, upstream: str | None = None,
                 keep_alive: bool = False):
        """`keep_alive`: HTTP/1.1, connections reused as llama.cpp's and vLLM's servers allow
        (the default, HTTP/1.0, closes each one: a kill then leaves no idle connection)."""
        if (respond is None) == (upstream is None):
            raise ValueError("give either respond (a stub) or upstream (a server to forward to)")
        self.respond, self.upstream = respond, upstream
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        """Chat request bodies, in arrival order."""
        self.answered_at: dict[int, float] = {}
        """Request index -> when its whole answer was written to the socket."""
        self.received_at: dict[int, float] = {}
        self._hold_from: int | None = None
        self._released = threading.Event()
        self.holding = threading.Event()
        """Set when a request is being held."""
        self.held = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
            disable_nagle_algorithm = keep_alive  # headers and body are two writes: no 40 ms ACK wait

            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                owner._handle(self)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def start(self) -> CountingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CountingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold_from(self, k: int) -> None:
        """Hold every request from the k-th (1-based) on, until `release()`."""
        with self.lock:
            self._hold_from, self.held = k, 0
            self._released.clear()
            self.holding.clear()

    def release(self) -> None:
        with self.lock:
            self._hold_from = None
        self._released.set()

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def in_flight_at(self, moment: float) -> int:
        """Requests received before `moment` whose answer had not been sent by then."""
        with self.lock:
            return sum(1 for i, t in self.received_at.items() if t <= moment
                       and self.answered_at.get(i, float("inf")) > moment)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        data = handler.rfile.read(int(handler.headers["Content-Length"]))
        body = json.loads(data)
        with self.lock:
            index = len(self.received)
            self.received.append(body)
            self.received_at[index] = time.monotonic()
            hold = self._hold_from is not None and index + 1 >= self._hold_from
            if hold:
                self.held += 1
        if hold:
            self.holding.set()
            self._released.wait()
        status, reply = self._reply(body, data)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            handler.wfile.write(reply)
            handler.wfile.flush()
        except OSError:  # the client is gone (killed): the call was cut mid-flight, never answered
            return
        with self.lock:
            self.answered_at[index] = time.monotonic()

    def _reply(self, body: dict[str, Any], data: bytes) -> tuple[int, bytes]:
        if self.upstream is not None:
            request = urllib.request.Request(self.upstream.rstrip("/") + CHAT_PATH, data=data,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - loopback
                return response.status, response.read()
        n = body.get("n", 1)
        text = self.respond(body)  # type: ignore[misc]
        reply = {"id": "stub", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                             for i in range(n)],
                 "usage": {"prompt_tokens": 20, "completion_tokens": 5 * n, "total_tokens": 20 + 5 * n}}
        return 200, json.dumps(reply).encode()


def stub_config(server: CountingServer) -> Any:
    """Every role played by the model behind `server`."""
    from refinegraph.config import Config, ModelSpec

    return Config(models={"m": ModelSpec(backend="openai", base_url=server.url, model="stub-model")},
                  roles={"default": "m"})


class LiveServer:
    """An ASGI app (`refinegraph serve`'s) on a free loopback port, uvicorn in a background
    thread: `with LiveServer(app) as base_url` gives its /v1 URL."""

    def __init__(self, app: Any, *, log_level: str = "warning"):
        import uvicorn

        from refinegraph.procs import free_port

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve_stub_until_stdin_closes() -> None:
    """The stub (keep-alive, answer "The answer is 12.") as a process of its own: prints its
    /v1 URL, serves until its standard input closes (`python -m benchmarks.stub_server`)."""
    import sys

    with CountingServer(lambda body: "The answer is 12.", keep_alive=True) as stub:
        print(stub.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    serve_stub_until_stdin_closes()
