"""Any OpenAI-compatible server through the official async client.

n samples go in one request so the server processes the prompt once; where the server
caps n (`max_n`), the call is split into several requests and `Samples.requests` says so.
Retries are not done here: the run's choke point owns them (see refinegraph.context).

A 2xx answer that is not a chat completion (cut short, not JSON, no choices list) is a
MalformedResponse, which the choke point retries like a 5xx. Counting choices with
`/tokenize` (llama.cpp) happens after the completion succeeded, so a failed count never
sends the completion again: each /tokenize request is retried on its own under the run's
policy (recorded as `retry` events with request "tokenize"), and one that fails for good
is replaced by an estimate (4 characters a token), recorded as a `token_count_estimated`
fallback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, Literal

import httpx
import openai
from openai.types.chat import ChatCompletion

from refinegraph.config import ConfigError
from refinegraph.models import retry as retries
from refinegraph.models.base import MalformedResponse, Samples, Usage, api_key
from refinegraph.tool_calls import MARKER, ToolCall, ToolOffer, calls_in_content, encode, escape_marker

CHARS_PER_TOKEN = 4
"""The estimate for a choice whose /tokenize count failed for good."""

_log = logging.getLogger(__name__)

TokenCounting = Literal["auto", "usage", "tokenize"]
"""usage: trust the server's `usage` (split evenly over choices); tokenize: count each choice
with llama.cpp's `/tokenize`; auto (the default): tokenize when the answer shows it comes
from llama.cpp, whose `usage` counts one choice only when n > 1, else usage."""


def is_llama_cpp(response: Any) -> bool:
    """True when a chat completion came from llama.cpp's server: it alone adds a `timings`
    object (prompt_n, predicted_n) beside `usage`."""
    timings = (getattr(response, "model_extra", None) or {}).get("timings")
    return isinstance(timings, dict) and "predicted_n" in timings


class OpenAIModel:
    """A model behind an OpenAI-compatible `/v1/chat/completions` endpoint."""

    backend = "openai"
    supports_tools = True

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        max_n: int | None = None,
        timeout: float = 120.0,
        supports_json_schema: bool = True,
        count_tokens: TokenCounting = "auto",
        extra_body: dict[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ):
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.max_n = max_n
        self.supports_json_schema = supports_json_schema
        self.count_tokens = count_tokens
        self.extra_body = extra_body or {}
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or "not-needed",
            timeout=timeout,
            max_retries=0,
            http_client=http_client,
        )
        self._timeout = timeout
        self._tokenizer_http = httpx.AsyncClient(timeout=timeout) if count_tokens == "tokenize" else None

    def _split(self, n: int) -> list[int]:
        if not self.max_n or n <= self.max_n:
            return [n]
        full, rest = divmod(n, self.max_n)
        return [self.max_n] * full + ([rest] if rest else [])

    async def sample(self, messages, *, n=1, temperature=0.0, max_tokens=512, seed=None,
                     stop=None, response_format=None, logprobs=False, tools=None) -> Samples:
        parts = self._split(n)
        requests = [self._request(messages, n=k, temperature=temperature, max_tokens=max_tokens,
                                  seed=None if seed is None else seed + i, stop=stop,
                                  response_format=response_format, logprobs=logprobs, tools=tools)
                    for i, k in enumerate(parts)]
        responses = await _all_or_first_error(requests)
        offer = ToolOffer.model_validate(tools) if tools else None
        texts: list[str] = []
        finish: list[str | None] = []
        counts: list[int] = []
        lps: list[list[float]] = []
        usage = Usage()
        raw_usage: list[dict[str, Any]] = []
        reported_everywhere = all(r.usage is not None for r in responses)
        for asked, response in zip(parts, responses):
            choices = sorted(response.choices, key=lambda c: c.index)
            if len(choices) != asked:
                raise openai.APIResponseValidationError(
                    response=httpx.Response(200, request=httpx.Request("POST", self.base_url)), body=None,
                    message=f"asked for {asked} choices, the server returned {len(choices)}")
            part_texts = [self._text_of(c.message, offer) for c in choices]
            part_finish = [c.finish_reason for c in choices]
            texts += part_texts
            finish += part_finish
            if logprobs:
                lps += [[t.logprob for t in (c.logprobs.content or [])] if c.logprobs else [] for c in choices]
            reported = response.usage
            raw_usage.append(reported.model_dump() if reported else {})
            prompt = reported.prompt_tokens if reported else 0
            details = getattr(reported, "prompt_tokens_details", None) if reported else None
            cached = (getattr(details, "cached_tokens", None) or 0) if details else 0
            completion = reported.completion_tokens if reported else 0
            # counted as the model wrote them: a call read out of content is that content
            written = [text if getattr(c.message, "tool_calls", None) else c.message.content or ""
                       for c, text in zip(choices, part_texts)]
            part_counts = await self._count_choices(written, part_finish, completion,
                                                    llama_cpp=is_llama_cpp(response))
            counts += part_counts
            usage = usage + Usage(prompt_tokens=prompt, cached_prompt_tokens=cached,
                                  completion_tokens=sum(part_counts))
        return Samples(
            texts=texts, finish_reasons=finish, completion_tokens=counts,
            logprobs=lps if logprobs else None, usage=usage, server_usage=raw_usage,
            requests=len(parts), model_id=responses[0].model or self.model,
            usage_reported=reported_everywhere,
        )

    def _text_of(self, message: Any, offer: ToolOffer | None) -> str:
        """A choice's text: its content, with its tool calls (if any) written after it
        (refinegraph.tool_calls); plain content that holds the marker has it escaped.
        Content that is nothing but calls of the offered tools, written as text because the
        server did not parse them (`calls_in_content`), is read as those calls: a fallback."""
        content = message.content or ""
        calls = [ToolCall(id=c.id or "", name=c.function.name, arguments=c.function.arguments or "")
                 for c in (getattr(message, "tool_calls", None) or []) if getattr(c, "function", None)]
        if calls:
            return encode(content, calls)
        if written := calls_in_content(content, offer):
            reason = (f"model {self.name!r} wrote {len(written)} tool call(s) as its content "
                      f"({', '.join(c.name for c in written)}); read as tool_calls")
            if not retries.record_fallback("tool_calls_from_content", reason):
                _log.warning("%s", reason)
            return encode("", written)
        if MARKER in content:
            reason = f"model {self.name!r} answered text holding the tool-call marker: escaped, so it reads as text"
            if not retries.record_fallback("tool_marker_escaped", reason):
                _log.warning("%s", reason)
            return escape_marker(content)
        return content

    async def _request(self, messages, *, n, temperature, max_tokens, seed, stop,
                       response_format, logprobs, tools=None):
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": messages, "n": n, "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            kwargs["seed"] = seed
        if stop:
            kwargs["stop"] = stop
        if response_format is not None:
            kwargs["response_format"] = response_format
        if logprobs:
            kwargs["logprobs"] = True
        if tools:
            kwargs.update(tools)
        kwargs.update(self.extra_body)  # as create(extra_body=...): the config's keys win
        try:
            # The SDK's generic post, which `create` wraps: the same client, auth, timeout and
            # typed ChatCompletion, without `create`'s re-typing of the body (2-3 ms a call
            # of pure Python here, measured in `bench proxy`'s server; the body is plain JSON).
            response = await self._client.post("/chat/completions", body=kwargs, cast_to=ChatCompletion)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the SDK parses the body unguarded
            raise MalformedResponse(f"the server's 2xx body is not JSON: {exc}") from exc
        _check_shape(response)
        return response

    async def _count_choices(self, texts: list[str], finish: list[str | None], reported: int,
                             *, llama_cpp: bool = False) -> list[int]:
        """Tokens of each choice, one figure per choice.

        With n=1 the server's figure is exact. With n>1, OpenAI and vLLM report the sum
        over choices, which is split evenly (the sum stays exact); llama.cpp reports one
        choice only, so with count_tokens="tokenize" (or "auto" on a llama.cpp answer)
        each text is counted by `/tokenize`.
        """
        if len(texts) == 1:
            return [reported]
        tokenize_here = self.count_tokens == "tokenize" or (self.count_tokens == "auto" and llama_cpp)
        if not tokenize_here:
            share, rest = divmod(reported, len(texts))
            return [share + (1 if i < rest else 0) for i in range(len(texts))]
        if self._tokenizer_http is None:
            self._tokenizer_http = httpx.AsyncClient(timeout=self._timeout)
        root = self.base_url.removesuffix("/v1")
        tokenizer = self._tokenizer_http

        async def tokenize(text: str) -> int:
            response = await tokenizer.post(f"{root}/tokenize", json={"content": text})
            response.raise_for_status()
            try:
                tokens = response.json()["tokens"]
            except (ValueError, KeyError, TypeError) as exc:
                raise MalformedResponse(f"/tokenize answered {response.text[:200]!r}") from exc
            if not isinstance(tokens, list):
                raise MalformedResponse(f"/tokenize answered tokens={tokens!r:.200}")
            return len(tokens)

        counts = []
        # One request at a time: each failure is then exactly one recorded retry.
        for index, (text, reason) in enumerate(zip(texts, finish)):
            try:
                count = await retries.retried("tokenize", lambda text=text: tokenize(text))
            except (httpx.HTTPError, MalformedResponse) as exc:
                count = math.ceil(len(text) / CHARS_PER_TOKEN)
                reason_text = (f"model {self.name!r}: /tokenize failed for choice {index} "
                               f"({type(exc).__name__}: {exc}); counted {count} tokens at "
                               f"{CHARS_PER_TOKEN} characters a token")
                if not retries.record_fallback("token_count_estimated", reason_text[:2000]):
                    _log.warning("%s", reason_text)
            # A choice that stopped on end-of-generation also generated that token.
            counts.append(count + (1 if reason == "stop" else 0))
        return counts

    async def aclose(self) -> None:
        await self._client.close()
        if self._tokenizer_http is not None:
            await self._tokenizer_http.aclose()


def _check_shape(response: Any) -> None:
    """Refuse what the SDK returns for a 2xx body that is no chat completion (it builds its
    objects unvalidated, and returns a non-JSON body as text)."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not all(hasattr(c, "message") and hasattr(c, "index") for c in choices):
        raise MalformedResponse(f"the server's 2xx body is not a chat completion: {str(response)[:200]!r}")


async def _all_or_first_error(requests: list[Any]) -> list[Any]:
    """Await all requests; the first failure cancels the rest and is raised as itself
    (not as an ExceptionGroup), so the retry policy sees the real error."""
    if len(requests) == 1:
        return [await requests[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(request) for request in requests]
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
        while isinstance(first, ExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


def build(name: str, spec: Any) -> OpenAIModel:
    """The "openai" backend of a config entry (refinegraph.backends.OpenAISettings)."""
    if not spec.base_url or not spec.model:
        raise ConfigError(f"model {name!r}: the openai backend needs base_url and model")
    return OpenAIModel(name, base_url=spec.base_url, model=spec.model, api_key=api_key(name, spec),
                       max_n=spec.max_n, timeout=spec.timeout_s, supports_json_schema=spec.supports_json_schema,
                       count_tokens=spec.count_tokens, extra_body=spec.extra_body)
