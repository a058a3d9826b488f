"""Which model errors are worth another try, and the bounded backoff between tries."""

from __future__ import annotations

import contextvars
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from refinegraph.config import RetryPolicy
from refinegraph.models.base import MalformedResponse


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection errors, 429, 5xx and a 2xx body cut short or garbled (a transport
    fault: MalformedResponse); never a 4xx the request itself caused."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                        openai.InternalServerError, httpx.TimeoutException, httpx.TransportError,
                        MalformedResponse)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return False


def describe(exc: BaseException) -> str:
    """The error's message, naming the transport error beneath an SDK's wrapper: an
    APITimeoutError may be a connect timeout (the request never reached the server) or a
    read timeout (it did), and an audit of what the server was sent needs to tell them apart."""
    cause = exc.__cause__
    if cause is None or type(cause) is type(exc):
        return str(exc)
    return f"{exc} (cause: {type(cause).__name__})"


def retry_after_s(exc: BaseException | None) -> float | None:
    """The wait a server asked for with its error (retry-after-ms, or Retry-After in seconds
    or as an HTTP date), or None where it asked for none."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000)
    value = headers.get("retry-after")
    seconds = _finite(value)
    if seconds is None and value:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):  # neither a number nor a date: the header is ignored
            return None
    return None if seconds is None else max(0.0, seconds)


def _finite(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def backoff(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    """Exponential backoff with jitter, never shorter than the server's Retry-After: a server
    that says when to come back is believed, up to max_wait_s (the policy's cap wins)."""
    exponential = wait_exponential_jitter(multiplier=policy.initial_wait_s, max=policy.max_wait_s,
                                          jitter=policy.initial_wait_s)

    def wait(state: RetryCallState) -> float:
        asked = retry_after_s(state.outcome.exception() if state.outcome else None)
        planned = exponential(state)
        return planned if asked is None else max(planned, min(asked, policy.max_wait_s))

    return wait


def retrying(policy: RetryPolicy, on_retry: Callable[[RetryCallState], None]) -> AsyncRetrying:
    return AsyncRetrying(
        stop=stop_after_attempt(policy.max_retries + 1),
        wait=backoff(policy),
        retry=retry_if_exception(is_retryable),
        before_sleep=on_retry,
        reraise=True,
    )


async def call_with_retries(policy: RetryPolicy, on_retry: Callable[[RetryCallState], None],
                            call: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """Run `call` under the policy; return (result, attempts made).

    The first attempt runs bare (tenacity's machinery costs tens of microseconds a call);
    only a retryable failure enters the retry loop, which replays that failure as its own
    first attempt so waits, events and the cap are tenacity's as usual.
    """
    try:
        return await call(), 1
    except BaseException as exc:
        if policy.max_retries == 0 or not is_retryable(exc):
            raise
        first_failure: BaseException | None = exc

    async def attempt() -> Any:
        nonlocal first_failure
        if first_failure is not None:
            failure, first_failure = first_failure, None
            raise failure
        return await call()

    attempts = 0
    async for retry_attempt in retrying(policy, on_retry):
        with retry_attempt:
            attempts = retry_attempt.retry_state.attempt_number
            result = await attempt()
    return result, attempts


@dataclass(frozen=True)
class RetryScope:
    """The calling run's policy and recorders, for the requests a backend makes inside one
    model call besides the completion itself (llama.cpp's /tokenize): they are retried
    and recorded like the completion, without sending the completion again."""

    policy: RetryPolicy
    on_retry: Callable[[str, RetryCallState], None]
    """Called with (what was requested, tenacity's state) before each retry's wait."""
    on_fallback: Callable[[str, str], None]
    """Called with (kind, reason) when a backend substitutes for a request that failed for good."""


retry_scope: contextvars.ContextVar[RetryScope | None] = contextvars.ContextVar("refinegraph_retry_scope",
                                                                                default=None)
"""Set by RunContext around each backend call (see RunContext._call_backend)."""


async def retried(request: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """`call` under the current run's retry policy, each retry recorded as `request`'s; called
    once, bare, outside a run (no scope)."""
    scope = retry_scope.get()
    if scope is None:
        return await call()
    result, _ = await call_with_retries(scope.policy, lambda state: scope.on_retry(request, state), call)
    return result


def record_fallback(kind: str, reason: str) -> bool:
    """Record a backend's substitute in the current run's trace; False outside a run."""
    scope = retry_scope.get()
    if scope is None:
        return False
    scope.on_fallback(kind, reason)
    return True
