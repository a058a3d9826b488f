"""A request body read as the server's JSON: bounded, and refused with a 4xx, never a crash.

Beyond what `json.loads` checks, a body is refused when:

- it is over `limit` bytes (413), whatever its Content-Length says and also when chunked;
- its content type is not JSON (415): a browser posts `text/plain`, form or bodyless-type
  requests cross-site without a CORS preflight, so on a server without a key a web page
  could otherwise start runs (and spend a paid model's money) on the user's machine;
- it holds NaN, Infinity, or a number that overflows to infinity (not JSON, RFC 8259);
  (an integral number written with a fraction or exponent, `500.0`, is read as the integer);
- a number's magnitude is beyond 2**63 - 1, the signed 64-bit range (the checkpointer's
  msgpack and SQLite cannot store such an integer, so the run would fail after it was
  recorded; floats share the bound so that the OpenAPI document can state it: JSON Schema
  cannot tell 1e30 from the integer 1000000000000000000000000000000);
- a string holds a lone surrogate (`"\\ud800"`: not encodable as UTF-8, so not storable in a trace);
- it is nested deeper than MAX_DEPTH (no request needs it; deep nesting costs recursion later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request

from refinegraph.server.errors import ApiError

MAX_DEPTH = 64
INT_LIMIT = 2**63 - 1
DRAIN_BYTES = 1 << 20
DRAIN_SECONDS = 1.0


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or an `application/*+json` type, parameters (charset) allowed."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes (a lying Content-Length only ends it sooner)."""
    too_large = ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    stream = request.stream()
    if declared and declared.isdigit() and int(declared) > limit:
        await drain(stream)
        raise too_large
    body = bytearray()
    try:
        async for part in stream:
            body += part
            if len(body) > limit:
                await drain(stream)
                raise too_large
    except ClientDisconnect:  # gone mid-body: nothing to run, and no answer reaches anyone
        raise ApiError(400, "the client disconnected before sending the whole body", code="client_disconnected") \
            from None
    return bytes(body)


async def drain(stream: AsyncIterator[bytes]) -> None:
    """Read and drop what the client is still sending, at most DRAIN_BYTES within DRAIN_SECONDS.

    Why: a server that closes with unread bytes in its socket makes the kernel reset the
    connection, and the reset can discard the 413 before the client reads it (the client
    then sees "connection reset", not why). Bounded, so a client that never stops only
    costs DRAIN_SECONDS before the close.
    """
    left = DRAIN_BYTES
    with contextlib.suppress(TimeoutError, ClientDisconnect):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for part in stream:
                left -= len(part)
                if left <= 0:
                    return


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_number(text: str) -> float | int:
    """A JSON number with a fraction or exponent: an int when its value is integral (JSON has
    one number type, and JSON Schema, so the OpenAPI document, reads 500.0 as the integer
    500: `"max_tokens": 500.0` is taken as 500), else a finite float."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return int(value) if value.is_integer() else value


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, code="invalid_json")


def check_values(data: Any) -> None:
    """Depth, integer range and string encodability, walked without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise _invalid(f"the body is nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for key, item in items:
                if key is not None:
                    stack.append((key, depth))
                stack.append((item, depth + 1))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _invalid("the body has a string with a lone UTF-16 surrogate (not valid Unicode)") from None
        elif isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
            raise _invalid("the body has a number beyond the signed 64-bit range (magnitude over 2**63 - 1)")


def parse_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The body as a JSON object, or the 4xx that says what is wrong with it."""
    if not is_json_media_type(content_type):
        raise ApiError(415, f"content type {content_type or '(none)'!r} is not JSON: send "
                            "'Content-Type: application/json'", code="unsupported_media_type")
    try:
        data = json.loads(body, parse_constant=_refuse_constant, parse_float=_json_number)
    except RecursionError:
        raise _invalid(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/inf, over Python's int digit limit
        raise _invalid(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _invalid("the body must be a JSON object")
    check_values(data)
    return data
