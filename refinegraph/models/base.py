"""The async model protocol every backend implements, and what a call returns."""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from refinegraph.config import ConfigError
from refinegraph.trace.redact import register_secret


class Usage(BaseModel):
    """Token usage of one call, as the server reported it (completion counted per choice)."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class Samples(BaseModel):
    """The n texts of one sampling call, with what the backend said about them."""

    texts: list[str]
    finish_reasons: list[str | None] = Field(default_factory=list)
    completion_tokens: list[int] = Field(default_factory=list)
    """Tokens of each choice, counted per choice (not the server's single figure)."""
    logprobs: list[list[float]] | None = None
    usage: Usage = Field(default_factory=Usage)
    server_usage: list[dict[str, Any]] = Field(default_factory=list)
    """The raw `usage` object of each HTTP response, kept for audits."""
    requests: int = 1
    """How many requests the backend sent (more than 1 when the server caps n)."""
    usage_reported: bool = True
    """False when a server sent no `usage`: the call's tokens are then unknown (counted 0)."""
    model_id: str = ""


@runtime_checkable
class Model(Protocol):
    """An async chat model. Backends differ in transport, never in this signature.

    A backend that sets `supports_tools = True` also takes `tools=` (the request fields of
    a client's ToolOffer: tools, tool_choice, parallel_tool_calls) and writes a reply's tool
    calls into its text (refinegraph.tool_calls.encode); the run never offers tools to others.
    """

    name: str
    backend: str
    supports_json_schema: bool

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int | None = None,
        stop: list[str] | None = None,
        response_format: dict[str, Any] | None = None,
        logprobs: bool = False,
    ) -> Samples: ...

    async def aclose(self) -> None: ...


class ModelError(Exception):
    """A model call that failed for good (after retries), with the error's class recorded."""

    def __init__(self, model: str, error_class: str, message: str, attempts: int = 1):
        super().__init__(f"model {model!r} failed after {attempts} attempt(s): {error_class}: {message}")
        self.model = model
        self.error_class = error_class
        self.message = message
        self.attempts = attempts


class MalformedResponse(RuntimeError):
    """A 2xx answer whose body is not what the protocol promises (cut short, not JSON, no
    choices): a fault of the transport or of a middlebox, so it is retried like a 5xx."""


class ModelUnavailable(RuntimeError):
    """A backend that cannot start here (missing runtime or model file); says what to install."""


def valid_unicode(text: str) -> str:
    """`text` with each lone UTF-16 surrogate replaced by U+FFFD (pairs joined): a server's
    JSON may escape one ("\\ud800"), and no trace, cache or UTF-8 writer can store it."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def api_key(name: str, spec: Any, *, required: bool = True) -> str | None:
    """The model's API key from its `api_key_env`, registered as a secret so that no trace
    or log keeps it (e.g. a server's error message that echoes it); a variable named but
    unset is an error unless not `required`."""
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    register_secret(key)
    if required and spec.api_key_env and key is None:
        raise ConfigError(f"model {name!r}: environment variable {spec.api_key_env} is not set")
    return key
