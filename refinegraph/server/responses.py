"""Chat-completion bodies built from a RunResult: usage sums every call the run made."""

from __future__ import annotations

from typing import Any

from refinegraph.runner import RunResult
from refinegraph.server.errors import ApiError
from refinegraph.tool_calls import decode


def usage_of(result: RunResult) -> dict[str, Any]:
    u = result.usage
    return {"prompt_tokens": u.get("prompt_tokens", 0), "completion_tokens": u.get("completion_tokens", 0),
            "total_tokens": u.get("total_tokens", 0),
            "prompt_tokens_details": {"cached_tokens": u.get("cached_prompt_tokens", 0)}}


def content_of(result: RunResult) -> str:
    """What the reply says: the text the graph chose (the winning sample's, as the model
    wrote it: a chat client gets a reply, not a projection; the projected answer the vote
    was on is `refinegraph.answer`), else the run's answer (graphs whose answer is the text,
    e.g. Self-Refine's, or SQL's result), else "" (answered with a 422, see no_answer)."""
    chosen = result.state.get("solution")
    if isinstance(chosen, str) and chosen.strip():
        return decode(chosen)[0].strip() or (result.answer or "")
    return result.answer or ""


def reply_of(result: RunResult, tools: bool) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, tool_calls) of the reply. Without tools: the content (content_of). With
    tools: the chosen reply's own text (the chosen sample's, or Self-Refine's candidate),
    its tool calls in OpenAI's shape (the model's ids kept, made up where it sent none),
    content None when the call came without words, as OpenAI sends it."""
    if not tools:
        return content_of(result), None
    chosen = result.state.get("solution")
    text = chosen if isinstance(chosen, str) else (result.answer or "")
    content, calls = decode(text)
    if calls is None:
        return content.strip(), None
    made_up = f"call_{result.run_id[:16]}"
    return content.strip() or None, [call.openai(f"{made_up}_{i}") for i, call in enumerate(calls)]


def has_reply(result: RunResult, tools: bool) -> bool:
    """Whether the run has anything to say (else it is answered with a 422)."""
    content, calls = reply_of(result, tools)
    return bool(content or calls)


def metadata_of(result: RunResult, pipeline: str) -> dict[str, Any]:
    """The top-level `refinegraph` object (the openai client keeps it in `model_extra`)."""
    return {"run_id": result.run_id, "answer": result.answer, "pipeline": pipeline, "graph": result.graph,
            "stop_reason": result.stop_reason,
            "model_calls": result.model_calls, "cache_hits": result.cache_hits, "retries": result.retries,
            "fallbacks": result.fallbacks, "cost_usd": result.cost_usd}


def completion_body(result: RunResult, pipeline: str, created: int, *, tools: bool = False) -> dict[str, Any]:
    content, calls = reply_of(result, tools)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return {"id": f"chatcmpl-{result.run_id}", "object": "chat.completion", "created": created, "model": pipeline,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": usage_of(result), "refinegraph": metadata_of(result, pipeline)}


def failure_extra(run_id: str, result: RunResult | None) -> dict[str, Any]:
    """What an error body says about the failed run (its trace names the failure)."""
    extra: dict[str, Any] = {"run_id": run_id}
    if result is not None:
        extra.update(model_calls=result.model_calls, usage=result.usage)
    return extra


def no_answer(result: RunResult, headers: dict[str, str]) -> ApiError:
    """A 422 for a run that ended with nothing to say: an empty 200 would read as an answer."""
    return ApiError(422, f"run {result.run_id} found no answer (stop reason: {result.stop_reason})",
                    code="no_answer", headers={**headers, "x-should-retry": "false"},
                    extra={"run_id": result.run_id, "stop_reason": result.stop_reason,
                           "model_calls": result.model_calls, "usage": usage_of(result)})
