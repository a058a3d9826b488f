"""A small scripted OpenAI-compatible server (a TEST DOUBLE run in the test): it answers
each chat request with the message its `respond` function makes (text or tool calls) and
keeps every request body, so tests see what reached the upstream."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Respond = Callable[[dict[str, Any]], dict[str, Any]]


class ScriptedUpstream:
    def __init__(self, respond: Respond):
        self.respond = respond
        self.received: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                owner.received.append(body)
                reply = owner.reply(body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for i in range(body.get("n") or 1):
            message = {"role": "assistant", "content": None, **self.respond(body)}
            finish = "tool_calls" if message.get("tool_calls") else "stop"
            choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": None})
        return {"id": f"up-{len(self.received)}", "object": "chat.completion", "created": 0,
                "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 5 * len(choices),
                          "total_tokens": 10 + 5 * len(choices)}}

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
