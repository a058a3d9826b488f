"""A fault-injecting HTTP proxy on loopback, in front of an OpenAI-compatible server.

Why: the runtime claims that every fault between it and its models is retried within the
model's RetryPolicy, recorded and counted; this proxy makes those faults happen on
purpose, on real sockets, so tests and `refinegraph bench reliability` can check it.

Per request a seeded RNG picks a fault kind (or a caller's script does, in order):

- reset_before: the request's head is peeked at (to learn its path), its body is never
  read, and the connection is reset (TCP RST): the server certainly did no work;
- reset_after: the request is read and forwarded, the upstream does the work, its
  answer is dropped and the connection reset: a retry pays the upstream twice;
- http_500 / http_502 / http_503 / http_429, each also as `<kind>_retry_after` (a
  Retry-After header of `retry_after_s` seconds): an error status, nothing forwarded;
- stall: the request is read and nothing is answered until the client gives up (or
  `stall_s` passes): a client timeout;
- truncated_body: the upstream's answer with its full Content-Length, cut in half, then
  the connection reset (an incomplete message at the HTTP layer);
- truncated_json: the first half of the upstream's answer, framed as complete (a JSON
  body that ends mid-way);
- malformed_json: 200, `application/json`, garbage that is not JSON; nothing forwarded;
- wrong_shape: 200 with valid JSON that is no chat completion; nothing forwarded;
- slow: the upstream's answer dribbled out in small pieces over `slow_total_s` (within
  the client's timeout), then complete: no fault the client should see.

Everything else passes through unchanged (bodies are buffered, so a streamed answer
arrives whole). Which paths are faulted is `fault_paths` (prefixes; default every path,
`/tokenize` included). Counters (requests received and forwarded, by path, and faults by
kind) are guarded by a lock: `stats()` may be read from any thread while requests run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

STATUS_KINDS = ("http_500", "http_502", "http_503", "http_429")
FAULT_KINDS: tuple[str, ...] = (
    "reset_before", "reset_after",
    *STATUS_KINDS, *(f"{k}_retry_after" for k in STATUS_KINDS),
    "stall", "truncated_body", "truncated_json", "malformed_json", "wrong_shape", "slow",
)
"""Every kind the proxy injects; "none" (pass through) is the absence of one."""
FAILING_KINDS = tuple(k for k in FAULT_KINDS if k != "slow")
"""Kinds the client must see as a failed attempt (a slow answer still arrives whole)."""

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "content-length", "host"}
REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}
MAX_HEAD = 64 * 1024
DISCONNECT_POLL_S = 0.05


def spread(fault_rate: float, kinds: Iterable[str] = FAULT_KINDS) -> dict[str, float]:
    """Per-kind rates that share `fault_rate` evenly (a request is faulted with that chance)."""
    kinds = list(kinds)
    if not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"fault_rate must lie in [0, 1], got {fault_rate}")
    return {k: fault_rate / len(kinds) for k in kinds}


@dataclass
class ProxyStats:
    """A snapshot of the proxy's counters."""

    received: int = 0
    forwarded: int = 0
    received_by_path: dict[str, int] = field(default_factory=dict)
    forwarded_by_path: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    """Faults injected, by kind."""
    faults_by_path: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class FaultProxy:
    """Forwards loopback HTTP/1.1 to `upstream`, injecting faults per request.

    Use it in the running event loop (`async with FaultProxy(...) as proxy`) or on its own
    thread (`with FaultProxy(...).in_thread() as proxy`); `proxy.url` is its root URL.
    """

    def __init__(self, upstream: str, *, rates: Mapping[str, float] | None = None, seed: int = 0,
                 script: Iterable[str] = (), fault_paths: Iterable[str] = ("/",), retry_after_s: float = 1.0,
                 stall_s: float = 60.0, slow_total_s: float = 0.5, slow_chunk: int = 64,
                 upstream_timeout_s: float = 300.0):
        rates = dict(rates or {})
        unknown = set(rates) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
        if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates must be non-negative and sum to at most 1")
        script = list(script)
        if set(script) - set(FAULT_KINDS) - {"none"}:
            raise ValueError(f"unknown fault kinds in script: {sorted(set(script) - set(FAULT_KINDS) - {'none'})}")
        self.upstream = upstream.rstrip("/")
        self.rates = rates
        self.fault_paths = tuple(fault_paths)
        self.retry_after_s = retry_after_s
        self.stall_s = stall_s
        self.slow_total_s = slow_total_s
        self.slow_chunk = slow_chunk
        self.upstream_timeout_s = upstream_timeout_s
        self._rng = random.Random(seed)
        self._script = script
        self._lock = threading.Lock()
        self._received: Counter[str] = Counter()
        self._forwarded: Counter[str] = Counter()
        self._faults: Counter[tuple[str, str]] = Counter()
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._connections: set[asyncio.Task] = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The proxy's root URL (append /v1 for an OpenAI client's base_url)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        """Listen on a free loopback port (see `url`)."""
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=self.upstream_timeout_s)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and end open connections (a stalled one included)."""
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[FaultProxy]:
        """Run the proxy on its own event loop in a daemon thread for the block's duration
        (for synchronous callers, or to keep its work off the caller's loop)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        thread.start()
        started = False
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=30)
            started = True
            yield self
        finally:
            if started:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    # -- counters -------------------------------------------------------------------------

    def stats(self) -> ProxyStats:
        """The counters now (safe from any thread)."""
        with self._lock:
            by_path: dict[str, dict[str, int]] = {}
            for (path, kind), count in self._faults.items():
                by_path.setdefault(path, {})[kind] = count
            faults: Counter[str] = Counter()
            for (_, kind), count in self._faults.items():
                faults[kind] += count
            return ProxyStats(received=sum(self._received.values()), forwarded=sum(self._forwarded.values()),
                              received_by_path=dict(self._received), forwarded_by_path=dict(self._forwarded),
                              faults=dict(faults), faults_by_path=by_path)

    def _choose(self, path: str) -> str:
        """The fault for the next request on `path` (counted here), or "none"."""
        with self._lock:
            self._received[path] += 1
            if self._script:
                kind = self._script.pop(0)
            elif self.rates and path.startswith(self.fault_paths):
                kind, draw = "none", self._rng.random()
                for candidate in FAULT_KINDS:
                    draw -= self.rates.get(candidate, 0.0)
                    if draw < 0:
                        kind = candidate
                        break
            else:
                kind = "none"
            if kind != "none":
                self._faults[(path, kind)] += 1
            return kind

    def _count_forward(self, path: str) -> None:
        with self._lock:
            self._forwarded[path] += 1

    # -- serving --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            _reset(writer)  # a client that broke the protocol or went away mid-request
        except asyncio.CancelledError:
            # stop() ends open connections; the handler task then ends normally (asyncio's
            # stream server logs a connection task that ends cancelled as an error).
            _reset(writer)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):  # closing a socket the peer already reset
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is done."""
        head = await _read_head(reader)
        if head is None:
            return False
        method, target, headers = head
        path = target.split("?", 1)[0]
        kind = self._choose(path)
        if kind == "reset_before":
            _reset(writer)
            return False
        request = _Request(method, target, headers, await _read_body(reader, headers))
        keep_alive = (request.header("connection") or "").lower() != "close"
        if kind.startswith("http_"):
            status = int(kind.split("_")[1])
            extra = [("retry-after", _seconds(self.retry_after_s))] if kind.endswith("_retry_after") else []
            body = json.dumps({"error": {"message": f"injected fault {kind}", "type": "server_error",
                                         "code": status}}).encode()
            await _respond(writer, status, [("content-type", "application/json"), *extra], body, keep_alive)
            return keep_alive
        if kind == "stall":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), self.stall_s)  # returns when the client hangs up
            return False
        if kind == "malformed_json":
            garbage = b'{"id": "chatcmpl-fault", "choices": [}\x00 not json <html>'
            await _respond(writer, 200, [("content-type", "application/json")], garbage, keep_alive)
            return keep_alive
        if kind == "wrong_shape":
            body = json.dumps({"object": "error", "message": "injected fault wrong_shape"}).encode()
            await _respond(writer, 200, [("content-type", "application/json")], body, keep_alive)
            return keep_alive
        forwarded = await self._forward_while_connected(request, reader)
        if forwarded is None:  # the client gave up (its timeout) while the upstream worked
            return False
        status, upstream_headers, body = forwarded
        if kind == "reset_after":
            _reset(writer)
            return False
        if kind == "truncated_body":
            await _write_head(writer, status, upstream_headers, len(body), keep_alive=True)
            writer.write(body[: len(body) // 2])
            await writer.drain()
            _reset(writer)
            return False
        if kind == "truncated_json":
            await _respond(writer, status, upstream_headers, body[: len(body) // 2], keep_alive)
            return keep_alive
        if kind == "slow":
            await _write_head(writer, status, upstream_headers, len(body), keep_alive)
            pieces = [body[i:i + self.slow_chunk] for i in range(0, len(body), self.slow_chunk)] or [b""]
            pause = self.slow_total_s / len(pieces)
            for piece in pieces:
                await asyncio.sleep(pause)
                writer.write(piece)
                await writer.drain()
            return keep_alive
        await _respond(writer, status, upstream_headers, body, keep_alive)
        return keep_alive

    async def _forward_while_connected(self, request: _Request, reader: asyncio.StreamReader
                                       ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """The upstream's answer, or None when the client hung up first: the upstream
        request is then cancelled (its connection closed), as a real server would stop
        work nobody waits for, instead of piling it up behind the next requests."""
        forward = asyncio.ensure_future(self._forward(request))
        try:
            while not forward.done():
                await asyncio.wait({forward}, timeout=DISCONNECT_POLL_S)
                if not forward.done() and (reader.at_eof() or reader.exception() is not None):
                    forward.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await forward
                    return None
            return forward.result()
        finally:
            if not forward.done():  # this handler itself was cancelled (stop())
                forward.cancel()

    async def _forward(self, request: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
        """The upstream's answer to `request`, whole (status, end-to-end headers, raw body)."""
        assert self._client is not None, "proxy not started"
        self._count_forward(request.path)
        headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP]
        try:
            async with self._client.stream(request.method, request.target, headers=headers,
                                           content=request.body) as response:
                body = b"".join([chunk async for chunk in response.aiter_raw()])
                kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in HOP_BY_HOP]
                return response.status_code, kept, body
        except httpx.HTTPError as exc:  # the upstream itself failed: say so as a gateway would
            body = json.dumps({"error": {"message": f"upstream failed: {type(exc).__name__}: {exc}",
                                         "type": "proxy_error", "code": 502}}).encode()
            return 502, [("content-type", "application/json")], body


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, list[tuple[str, str]]] | None:
    """Request line and headers, or None when the client closed an idle connection."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return method, target, headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    values = {k.lower(): v for k, v in headers}
    if "chunked" in values.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # the empty trailer section
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(values.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


async def _write_head(writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]], length: int,
                      keep_alive: bool) -> None:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
    lines += [f"content-length: {length}", f"connection: {'keep-alive' if keep_alive else 'close'}"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _respond(writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]], body: bytes,
                   keep_alive: bool) -> None:
    await _write_head(writer, status, headers, len(body), keep_alive)
    writer.write(body)
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed server or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # the socket may already be gone
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _seconds(value: float) -> str:
    """A Retry-After value: whole seconds as HTTP says, fractions as clients accept them."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
