"""RunContext: what LangGraph hands every node, and the one choke point for model calls.

Every call goes: budget check -> replay cache -> backend with retries -> usage charged ->
`llm_call` event. No node talks to a backend directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import RetryCallState

from refinegraph.budget import MIN_COMPLETION_TOKENS, Budget, BudgetExceeded
from refinegraph.cache import CachedSample, ReplayCache, call_key, sample_keys
from refinegraph.config import Config, RetryPolicy
from refinegraph.events import BudgetEvent, ErrorEvent, Event, Fallback, LLMCall, Retry, ToolCallEvent
from refinegraph.models.base import (
    MalformedResponse,
    Model,
    ModelError,
    ModelUnavailable,
    Samples,
    Usage,
    valid_unicode,
)
from refinegraph.models.retry import RetryScope, call_with_retries, describe, retry_scope
from refinegraph.tool_calls import ToolOffer, decode
from refinegraph.tool_calls import call_key as tool_call_key

_log = logging.getLogger(__name__)

current_node: contextvars.ContextVar[str | None] = contextvars.ContextVar("refinegraph_node", default=None)
role_overrides: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("refinegraph_roles",
                                                                                      default=None)
"""Roles re-bound for the current task and the tasks it starts (see RunContext.playing)."""


class ReplayMiss(RuntimeError):
    """A replayed run asked for a call its trace did not record."""


class ToolsUnsupported(ModelUnavailable):
    """Tools were offered to a model whose backend cannot pass them on (only backends with
    `supports_tools`, the openai one, can)."""


PROMPT_BYTES_PER_TOKEN = 2
"""The margin of the prompt estimate when a model cannot count its prompt: two UTF-8 bytes
a token (English text runs about four characters a token; byte-level tokenizers never
exceed one token a byte), plus a chat template's few tokens per message."""


def prompt_upper_estimate(messages: list[dict[str, Any]]) -> int:
    """A prompt's tokens, estimated on the safe side for a budget (PROMPT_BYTES_PER_TOKEN)."""
    size = sum(len(str(m.get("content", "")).encode("utf-8")) for m in messages)
    return -(-size // PROMPT_BYTES_PER_TOKEN) + 4 * len(messages) + 8


@dataclass
class RunContext:
    """Models by name and role, budget, trace writer and replay cache of one run."""

    run_id: str
    models: dict[str, Model]
    roles: dict[str, str]
    writer: Any
    budget: Budget = field(default_factory=Budget)
    cache: ReplayCache = field(default_factory=ReplayCache)
    config: Config = field(default_factory=Config)
    replay_only: bool = False
    charge_cache_hits: bool = True
    """Whether a call served from the cache is charged: yes in a replay (so it spends the
    budget as the original did), no when resuming (the run already paid for it)."""
    occurrences: Counter = field(default_factory=Counter)
    """How many times each identical request was made in this run (see cache.py)."""
    _refusals_replayed: int = 0
    model_calls: int = 0
    cache_hits: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    fallbacks: Counter = field(default_factory=Counter)
    retries: int = 0
    conversation: list[dict[str, Any]] | None = None
    """The client's whole chat when the run's input is one (see refinegraph/conversation.py)."""
    on_event: Callable[[Event], None] | None = None
    """Called with each event once it is written (node started, model call, retry, ...):
    how a caller shows what the run is doing (the CLI's status line, refinegraph.progress).
    One that raises is dropped for the rest of the run and recorded as a fallback."""
    tools: ToolOffer | None = None
    """The tools the client offered with it; the calls answering the conversation pass
    them on (`sample(..., tools=ctx.tools)`), see refinegraph.tool_calls."""

    # -- events ---------------------------------------------------------------------------

    def emit(self, event: Event) -> Event:
        """Write a decision or runtime event, stamped with the node that made it."""
        if event.node is None:
            event.node = current_node.get()
        if event.type == "fallback":  # type: ignore[attr-defined]
            self.fallbacks[event.kind] += 1  # type: ignore[attr-defined]
        written = self.writer.append(event)
        if self.on_event is not None:
            self._notify(written)
        return written

    def _notify(self, event: Event) -> None:
        hook, self.on_event = self.on_event, None  # an event the hook's failure emits is not sent to it
        try:
            hook(event)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - a display must not break the run: logged and recorded
            _log.warning("the run's on_event callback %r failed on event %s: dropped", hook, event.seq, exc_info=True)
            self.fallback("event_hook", "the on_event callback raised; it is not called again in this run",
                          f"{type(exc).__name__}: {exc}")
        else:
            self.on_event = hook

    def fallback(self, kind: str, reason: str, detail: str = "") -> None:
        self.emit(Fallback(kind=kind, reason=reason, detail=detail[:2000]))

    # -- models ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def playing(self, model: str, *roles: str) -> Iterator[None]:
        """Within this block (and the tasks it starts), `model` plays `roles` (all roles when
        none are named): how ACAR runs one mode graph once per model."""
        if model not in self.models:
            raise KeyError(f"unknown model {model!r}; known models: {', '.join(sorted(self.models))}")
        bound = {**(role_overrides.get() or {}), **({r: model for r in roles} if roles else {"*": model})}
        token = role_overrides.set(bound)
        try:
            yield
        finally:
            role_overrides.reset(token)

    def model_name(self, role: str) -> str:
        """The model that plays `role` (the `default` role's model when none is named)."""
        overrides = role_overrides.get() or {}
        name = (overrides.get(role) or overrides.get("*") or self.roles.get(role)
                or self.roles.get("default"))
        if name is None or name not in self.models:
            raise KeyError(f"no model for role {role!r}; known models: {', '.join(sorted(self.models))}")
        return name

    def supports_json_schema(self, role: str) -> bool:
        return self.models[self.model_name(role)].supports_json_schema

    async def sample(self, role: str, messages: list[dict[str, Any]], *, n: int = 1,
                     temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None,
                     stop: list[str] | None = None, response_format: dict[str, Any] | None = None,
                     logprobs: bool = False, min_tokens: int = MIN_COMPLETION_TOKENS,
                     tools: ToolOffer | None = None) -> Samples:
        """The choke point: every model call of every node comes through here.

        `min_tokens` is the least completion per sample worth paying for (a structured
        verdict needs more than a few tokens); below it the budget refuses the call.
        `tools` (the client's offer) go with the request; a reply's tool calls come back
        in its text (refinegraph.tool_calls) and each is recorded as a `tool_call` event.
        """
        name = self.model_name(role)
        model = self.models[name]
        if tools is not None and not getattr(model, "supports_tools", False):
            message = (f"model {name!r} (backend {model.backend}) cannot take the client's tools; tool calls "
                       "reach models of the openai backend only")
            self.emit(ErrorEvent(error_class="ToolsUnsupported", message=message))
            raise ToolsUnsupported(message)
        requested = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed, "stop": stop,
                     "response_format": response_format, "logprobs": logprobs}
        offered = {"tools": tools.request_fields()} if tools is not None else {}
        call = call_key(name, messages, {**requested, **offered})  # without tools: the key of old traces
        occurrence = self.occurrences[call]
        keys = sample_keys(call, occurrence, n)
        cached = [self.cache.get(k) for k in keys]
        hit = all(c is not None for c in cached)
        failure = self.cache.failures.get(keys[0]) if self.replay_only and not hit else None
        if failure is not None:  # the original's call failed for good: so does the replay's
            self.occurrences[call] += 1
            self.emit(ErrorEvent(error_class=failure["error_class"], message=failure["message"],
                                 cache_keys=keys, attempts=failure.get("attempts", 0)))
            attempts = failure.get("attempts", 0)
            raw = failure["message"].removeprefix(f"model {name!r} after {attempts} attempt(s): ")
            raise ModelError(name, failure["error_class"], raw, attempts)
        prompt_size: tuple[int, str] | None = None
        if hit and not self.charge_cache_hits:
            allowed = max_tokens  # already paid for: a resumed run re-serves it, whatever is left
        else:
            if self.budget.max_tokens is not None and not (self.replay_only and not hit):
                prompt_size = await self._prompt_size(name, model, messages)
            allowed = self._admit(name, n, max_tokens, messages, min_tokens, recorded=hit,
                                  prompt_tokens=prompt_size[0] if prompt_size else None)
        allowed = self.budget.per_call(allowed)
        self.occurrences[call] += 1
        params = {**requested, "max_tokens": allowed}
        started = time.perf_counter()
        if hit:
            samples = _from_cache(cached, name)  # type: ignore[arg-type]
            source, attempts = "cache", 0
            self.cache_hits += 1
        else:
            samples, attempts = await self._call_backend(model, name, messages, n=n,
                                                         params={**params, **offered}, keys=keys)
            samples = self._storable(name, samples)
            source = "backend"
            if not samples.usage_reported:
                self.fallback("usage_missing", f"model {name!r} reported no token usage: counted as 0")
            self.model_calls += samples.requests
            self.cache.put_samples(keys, samples)
        latency = (time.perf_counter() - started) * 1000
        paid = source == "backend" or self.charge_cache_hits
        if paid:
            self.budget.charge(samples.usage.total_tokens, calls=1)
            self.usage = self.usage + samples.usage
        cost = self._cost(name, samples.usage) if paid else None
        if cost is not None:
            self.cost_usd += cost
        counted = ({"prompt_tokens_assumed": prompt_size[0], "prompt_count": prompt_size[1]}
                   if prompt_size else {})
        if prompt_size and paid and samples.usage.prompt_tokens > prompt_size[0]:
            self.fallback("prompt_estimate_short",
                          f"model {name!r}: the prompt was {samples.usage.prompt_tokens} tokens, "
                          f"{prompt_size[0]} were assumed ({prompt_size[1]}); the budget can be passed by "
                          f"the difference")
        self.emit(LLMCall(
            model=name, role=role, backend=model.backend, source=source,
            params={**params, "n": n, "max_tokens_requested": max_tokens, **counted}, call_key=call,
            occurrence=occurrence, cache_keys=keys,
            request_blob=self.writer.put_blob({"messages": messages, **offered}),
            response_blob=self.writer.put_blob({"texts": samples.texts,
                                                "finish_reasons": samples.finish_reasons}),
            requests=samples.requests, attempts=attempts,
            prompt_tokens=samples.usage.prompt_tokens,
            cached_prompt_tokens=samples.usage.cached_prompt_tokens,
            completion_tokens=samples.usage.completion_tokens,
            choice_tokens=samples.completion_tokens, server_usage=samples.server_usage,
            finish_reasons=samples.finish_reasons, latency_ms=round(latency, 3), cost_usd=cost,
            max_tokens_capped=allowed < max_tokens,
        ))
        if tools is not None:
            self._record_tool_calls(name, role, call, occurrence, samples.texts, tools)
        # Committed before the node goes on, so a crash never re-pays this call (many
        # concurrent runs share one transaction: TraceWriter.commit).
        await self.writer.commit()
        return samples

    def _record_tool_calls(self, name: str, role: str, call: str, occurrence: int, texts: list[str],
                           tools: ToolOffer) -> None:
        """A `tool_call` event for every call of every reply (served or replayed alike)."""
        offered = set(tools.names())
        for sample, text in enumerate(texts):
            _, calls = decode(text)
            if not calls:
                continue
            key = tool_call_key(calls)
            for position, tool_call in enumerate(calls):
                self.emit(ToolCallEvent(model=name, role=role, call_key=call, occurrence=occurrence, sample=sample,
                                        position=position, id=tool_call.id, name=tool_call.name,
                                        arguments=tool_call.arguments[:4000],
                                        arguments_valid=tool_call.parsed_arguments() is not None,
                                        offered=tool_call.name in offered, key=key[:4000]))


    async def _prompt_size(self, name: str, model: Model, messages: list[dict[str, Any]]) -> tuple[int, str]:
        """The prompt's tokens as the budget assumes them, and how they were found: counted
        by the model's own tokenizer when it has one (`count_prompt_tokens`), else
        `prompt_upper_estimate` (a safety margin; a prompt that proves longer is recorded)."""
        counter = getattr(model, "count_prompt_tokens", None)
        if counter is not None:
            try:
                count = await counter(messages)
            except (httpx.HTTPError, MalformedResponse) as exc:
                self.fallback("prompt_count_failed", f"model {name!r} could not count the prompt "
                              f"({type(exc).__name__}: {describe(exc)[:300]}); estimated with a margin")
                count = None
            if count is not None:
                return count, "tokenizer"
        return prompt_upper_estimate(messages), "estimate"

    def _admit(self, name: str, n: int, max_tokens: int, messages: list[dict[str, Any]], min_tokens: int,
               *, recorded: bool, prompt_tokens: int | None = None) -> int:
        """The budget's answer for this call: the max_tokens it may use, or BudgetExceeded.

        A replay has no backend: a call its trace did not record is refused as the
        original was (same reason, recorded spend), or is a ReplayMiss.
        """
        if self.replay_only and not recorded:
            if self._refusals_replayed < len(self.cache.refusals):
                original = self.cache.refusals[self._refusals_replayed]
                self._refusals_replayed += 1
                self.emit(BudgetEvent(reason=original["reason"], spent=original["spent"],
                                      limits=original["limits"], elapsed_s=original.get("elapsed_s", 0.0)))
                raise BudgetExceeded(original["reason"], original["spent"], original["limits"])
            exc = ReplayMiss(f"model {name!r} was asked for a call the trace did not record")
            self.emit(ErrorEvent(error_class="ReplayMiss", message=str(exc)))
            raise exc
        prompt_estimate = prompt_tokens if prompt_tokens is not None else prompt_upper_estimate(messages)
        try:
            return self.budget.admit(n, max_tokens, prompt_estimate, min_tokens)
        except BudgetExceeded as exc:
            if self.replay_only:
                self._refusals_replayed += 1
            self.emit(BudgetEvent(reason=exc.reason, spent=exc.spent, limits=exc.limits,
                                  elapsed_s=self.budget.elapsed()))
            raise

    async def _call_backend(self, model: Model, name: str, messages: list[dict[str, Any]], *,
                            n: int, params: dict[str, Any], keys: list[str]) -> tuple[Samples, int]:
        spec = self.config.models.get(name)
        policy = spec.retry if spec else RetryPolicy()

        def on_retry(request: str, state: RetryCallState) -> None:
            self.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            self.emit(Retry(model=name, attempt=state.attempt_number, error_class=type(exc).__name__,
                            message=describe(exc)[:500] if exc else "", wait_s=round(wait, 3), request=request))

        attempts = 0

        async def attempt() -> Samples:
            nonlocal attempts
            attempts += 1
            return await model.sample(messages, n=n, **params)

        # The backend's own follow-up requests (llama.cpp's /tokenize) retry under the same
        # policy and record into this run; the scope is this task's (and its children's) only.
        scope = retry_scope.set(RetryScope(policy, on_retry, self.fallback))
        try:
            samples, _ = await call_with_retries(policy, lambda state: on_retry("completion", state), attempt)
            return samples, attempts
        except asyncio.CancelledError:
            # Cancelled from outside (a sibling branch failed, the caller gave up): the
            # attempts it made are recorded, without cache keys (a replay does not fail it).
            self.emit(ErrorEvent(error_class="CancelledError",
                                 message=f"model {name!r}: call cancelled during attempt {attempts}",
                                 attempts=attempts))
            raise
        except ModelUnavailable as exc:
            self.emit(ErrorEvent(error_class="ModelUnavailable", message=str(exc)))
            raise
        except Exception as exc:  # every backend failure becomes one typed, recorded error
            # The error raised says what the trace records, so a replay (which raises it from
            # the trace) makes the same decisions with it.
            prefix = f"model {name!r} after {attempts} attempt(s): "
            message = f"{prefix}{describe(exc)}"[:2000]
            self.emit(ErrorEvent(error_class=type(exc).__name__, message=message, cache_keys=keys,
                                 attempts=attempts))
            raise ModelError(name, type(exc).__name__, message.removeprefix(prefix), attempts) from exc
        finally:
            retry_scope.reset(scope)

    def _storable(self, name: str, samples: Samples) -> Samples:
        texts = [valid_unicode(text) for text in samples.texts]
        if texts == samples.texts:
            return samples
        self.fallback("lone_surrogate_replaced", f"model {name!r} answered text with lone UTF-16 surrogates (no "
                                                 "Unicode): each replaced by U+FFFD, so the trace can store it")
        return samples.model_copy(update={"texts": texts})

    def _cost(self, name: str, usage: Usage) -> float | None:
        spec = self.config.models.get(name)
        if spec is None or spec.price_input_per_mtok is None or spec.price_output_per_mtok is None:
            return None
        return (usage.prompt_tokens * spec.price_input_per_mtok
                + usage.completion_tokens * spec.price_output_per_mtok) / 1e6


def _from_cache(cached: list[CachedSample], name: str) -> Samples:
    """Recorded samples with their recorded usage, so a replay spends the budget alike."""
    return Samples(
        texts=[c.text for c in cached], finish_reasons=[c.finish_reason for c in cached],
        completion_tokens=[c.tokens for c in cached],
        usage=Usage(prompt_tokens=sum(c.prompt_tokens for c in cached),
                    cached_prompt_tokens=sum(c.cached_prompt_tokens for c in cached),
                    completion_tokens=sum(c.tokens for c in cached)),
        requests=0, model_id=name,
    )
