"""Which model errors are worth another try, and the bounded backoff between tries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection errors, 429 and 5xx; never a 4xx the request itself caused."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                        openai.InternalServerError, httpx.TimeoutException, httpx.TransportError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return False


def retrying(policy: RetryPolicy, on_retry: Callable[[RetryCallState], None]) -> AsyncRetrying:
    return AsyncRetrying(
        stop=stop_after_attempt(policy.max_retries + 1),
        wait=wait_exponential_jitter(multiplier=policy.initial_wait_s, max=policy.max_wait_s,
                                     jitter=policy.initial_wait_s),
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
