"""Any langchain-core chat model (BaseChatModel) as a refinegraph model: users keep theirs.

How the protocol maps onto LangChain:

- messages: refinegraph's OpenAI-style dicts become LangChain messages (`convert_to_messages`).
- n samples: one call per sample by default (`agenerate`, run concurrently). Each reply
  then carries its own exact `usage_metadata`, whatever the server; the prompt is
  processed n times (a server's prefix cache softens that). With `native_n=True` and a
  model that has an `n` field (ChatOpenAI and its kin) the n samples go in one request;
  LangChain copies that request's usage onto every reply, so it is counted once and split
  evenly over the choices (llama.cpp's server reports one choice's tokens when n > 1: keep
  the default there).
- temperature, max_tokens, seed, stop, logprobs: passed as call keyword arguments (what
  `.bind(...)` does) when the model class has a field of that name, so a model that does
  not know one is not sent it. With one call per sample, sample i gets seed + i (equal
  seeds would give equal samples).
- usage: `usage_metadata` (input_tokens, output_tokens, input_token_details.cache_read) of
  each AIMessage; a reply without it makes the call's usage unknown (`usage_reported=False`,
  recorded as a `usage_missing` fallback by the run).
- finish reasons: `response_metadata["finish_reason"]` (OpenAI-style) or `stop_reason`
  (Anthropic-style).
- structured output: `response_format` is passed through for OpenAI-compatible classes
  (langchain_openai's BaseChatOpenAI), which is what `supports_json_schema` defaults to;
  for other classes it is False and nodes parse tolerantly.
"""

from __future__ import annotations

import importlib
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from langchain_core.outputs import ChatGeneration

from refinegraph.config import ConfigError, ModelSpec
from refinegraph.models.base import Samples, Usage, api_key
from refinegraph.models.openai_backend import _all_or_first_error

_PARAM_FIELDS = ("temperature", "max_tokens", "seed", "logprobs")


def _openai_compatible(chat_model: BaseChatModel) -> bool:
    try:
        from langchain_openai.chat_models.base import BaseChatOpenAI
    except ImportError:
        return False
    return isinstance(chat_model, BaseChatOpenAI)


class LangChainModel:
    """A langchain-core chat model behind refinegraph's Model protocol."""

    backend = "langchain"

    def __init__(self, name: str, chat_model: BaseChatModel, *, native_n: bool = False,
                 supports_json_schema: bool | None = None, accepts: set[str] | None = None):
        """`accepts`: which of temperature, max_tokens, seed, logprobs to pass (default: those
        the class has as fields). `supports_json_schema`: default True for OpenAI-compatible
        classes only."""
        if not isinstance(chat_model, BaseChatModel):
            raise TypeError(f"model {name!r}: expected a langchain-core BaseChatModel, got {type(chat_model).__name__}")
        fields = set(type(chat_model).model_fields)
        self.name = name
        self.chat_model = chat_model
        self.native_n = native_n and "n" in fields
        self.accepts = set(accepts) if accepts is not None else {f for f in _PARAM_FIELDS if f in fields}
        self.supports_json_schema = (_openai_compatible(chat_model) if supports_json_schema is None
                                     else supports_json_schema)
        self.model = str(getattr(chat_model, "model_name", None) or getattr(chat_model, "model", None)
                         or type(chat_model).__name__)

    def _kwargs(self, *, temperature: float, max_tokens: int, seed: int | None, response_format: Any,
                logprobs: bool) -> dict[str, Any]:
        wanted = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed,
                  "logprobs": True if logprobs else None}
        kwargs = {k: v for k, v in wanted.items() if k in self.accepts and v is not None}
        if response_format is not None and self.supports_json_schema:
            kwargs["response_format"] = response_format
        return kwargs

    async def sample(self, messages, *, n=1, temperature=0.0, max_tokens=512, seed=None,
                     stop=None, response_format=None, logprobs=False) -> Samples:
        lc_messages = convert_to_messages(messages)
        base = self._kwargs(temperature=temperature, max_tokens=max_tokens, seed=seed,
                            response_format=response_format, logprobs=logprobs)
        if self.native_n and n > 1:
            result = await self.chat_model.agenerate([lc_messages], stop=stop, n=n, **base)
            generations = list(result.generations[0])
            if len(generations) != n:
                raise ValueError(f"asked {self.name!r} for {n} choices, it returned {len(generations)}")
            return self._samples(generations, logprobs, shared_usage=True)
        calls = []
        for i in range(n):
            kwargs = dict(base)
            if "seed" in kwargs:
                kwargs["seed"] = kwargs["seed"] + i
            calls.append(self.chat_model.agenerate([lc_messages], stop=stop, **kwargs))
        results = await _all_or_first_error(calls)
        return self._samples([r.generations[0][0] for r in results], logprobs, shared_usage=False, requests=n)

    def _samples(self, generations: list[Any], logprobs: bool, *, shared_usage: bool, requests: int = 1) -> Samples:
        messages: list[BaseMessage] = [g.message if isinstance(g, ChatGeneration) else AIMessage(g.text)
                                       for g in generations]
        texts = [_text(m) for m in messages]
        finish = [_finish_reason(m, g) for m, g in zip(messages, generations)]
        reported = [getattr(m, "usage_metadata", None) for m in messages]
        usage_reported = all(u is not None for u in reported)
        raw = [dict(u) for u in reported if u is not None]
        if shared_usage:  # one request: every reply carries the same, whole-request usage
            first = reported[0] or {}
            prompt, cached = first.get("input_tokens", 0), _cache_read(first)
            total = first.get("output_tokens", 0)
            share, rest = divmod(total, len(texts))
            counts = [share + (1 if i < rest else 0) for i in range(len(texts))]
            raw = raw[:1]
        else:
            prompt = sum((u or {}).get("input_tokens", 0) for u in reported)
            cached = sum(_cache_read(u or {}) for u in reported)
            counts = [(u or {}).get("output_tokens", 0) for u in reported]
        lps = [_logprobs(m) for m in messages] if logprobs else None
        served = [m.response_metadata.get("model_name") or m.response_metadata.get("model") for m in messages]
        model_id = str(next((s for s in served if s), self.model))
        return Samples(texts=texts, finish_reasons=finish, completion_tokens=counts, logprobs=lps,
                       usage=Usage(prompt_tokens=prompt, cached_prompt_tokens=cached, completion_tokens=sum(counts)),
                       server_usage=raw, requests=requests, usage_reported=usage_reported, model_id=model_id)

    async def aclose(self) -> None:
        """The chat model belongs to its owner (or to the config entry): nothing to close here."""
        return None


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content
                   if isinstance(part, str) or part.get("type") == "text")


def _finish_reason(message: BaseMessage, generation: Any) -> str | None:
    meta = {**(getattr(generation, "generation_info", None) or {}), **message.response_metadata}
    reason = meta.get("finish_reason") or meta.get("stop_reason") or meta.get("done_reason")
    return str(reason) if reason is not None else None


def _cache_read(usage: dict[str, Any]) -> int:
    return int((usage.get("input_token_details") or {}).get("cache_read") or 0)


def _logprobs(message: BaseMessage) -> list[float]:
    content = (message.response_metadata.get("logprobs") or {}).get("content") or []
    return [float(t["logprob"]) for t in content if isinstance(t, dict) and "logprob" in t]


def load_chat_class(path: str) -> type[BaseChatModel]:
    """The class named "package.module:ClassName" or "package.module.ClassName"."""
    module_name, sep, class_name = path.partition(":")
    if not sep:
        module_name, _, class_name = path.rpartition(".")
    if not module_name or not class_name:
        raise ConfigError(f"langchain_class {path!r}: expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.split(".")[0].replace("_", "-")
        raise ConfigError(f"langchain_class {path!r}: cannot import {module_name!r} ({exc}); "
                          f"install it, e.g. pip install {package}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"langchain_class {path!r}: module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, BaseChatModel)):
        raise ConfigError(f"langchain_class {path!r} is not a langchain-core chat model (BaseChatModel)")
    return cls


def build_langchain_model(name: str, spec: ModelSpec, api_key: str | None = None) -> LangChainModel:
    """A config entry's chat model: `langchain_class(**langchain_kwargs)`, with api_key from
    api_key_env and max_retries=0 unless given (retries belong to the run, which records them;
    a model built in code keeps the retries its owner gave it)."""
    if not spec.langchain_class:
        raise ConfigError(f"model {name!r}: the langchain backend needs langchain_class "
                          "(e.g. \"langchain_openai:ChatOpenAI\")")
    cls = load_chat_class(spec.langchain_class)
    kwargs = dict(spec.langchain_kwargs)
    if api_key is not None and "api_key" not in kwargs:
        kwargs["api_key"] = api_key
    if "max_retries" in cls.model_fields and "max_retries" not in kwargs:
        kwargs["max_retries"] = 0  # the run's choke point retries, and records each retry
    try:
        chat_model = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any constructor failure is a config problem, said as such
        raise ConfigError(f"model {name!r}: {spec.langchain_class}(**langchain_kwargs) failed: "
                          f"{type(exc).__name__}: {exc}") from None
    explicit = "supports_json_schema" in spec.model_fields_set
    return LangChainModel(name, chat_model, native_n=spec.langchain_native_n,
                          supports_json_schema=spec.supports_json_schema if explicit else None)


def build(name: str, spec: ModelSpec) -> LangChainModel:
    """The "langchain" backend of a config entry (refinegraph.backends.LangChainSettings)."""
    return build_langchain_model(name, spec, api_key(name, spec))
