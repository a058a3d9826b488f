"""`stream=true`: the chosen answer as OpenAI streams one, as SSE.

Every line is `data: <chat.completion.chunk>`, as OpenAI sends them:

1. `delta = {"role": "assistant", "content": ""}`, `refinegraph = {"run_id": ...}`;
2. only for a client that asked for progress (`"refinegraph": {"progress": true}`): one
   chunk per trace event (node_started, llm_call, vote, ... in trace order), `delta =
   {"content": ""}` and the event in `refinegraph.event`; other clients never see them;
3. the chosen answer, a piece (a word and the space after it) per chunk; a reply that calls
   tools then has one chunk per call (`delta.tool_calls = [{index, id, type, function:
   {name, arguments}}]`, the arguments whole);
4. `delta = {}`, `finish_reason = "stop"` (`"tool_calls"` for a tool call) and the run's
   metadata in `refinegraph`;
5. with `stream_options.include_usage`: the usage chunk last (`choices = []`, the whole
   run's `usage`), as OpenAI sends it;
6. `data: [DONE]`.

A run that fails sends `data: {"error": {...}}` (the openai client raises APIError) and
ends. Events are read from the trace store every POLL_S: the trace writer commits a
node's events at its next model call, so progress arrives at that grain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from refinegraph.runner import RunFailed, RunResult
from refinegraph.server.errors import error_body
from refinegraph.server.responses import failure_extra, metadata_of, no_answer, reply_of, usage_of
from refinegraph.trace.store import TraceStore

POLL_S = 0.1
PIECE = re.compile(r"\s*\S+\s*|\s+")
log = logging.getLogger("refinegraph.server")


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class ChunkMaker:
    def __init__(self, run_id: str, pipeline: str, created: int):
        self.base = {"id": f"chatcmpl-{run_id}", "object": "chat.completion.chunk", "created": created,
                     "model": pipeline}

    def __call__(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**self.base, "choices": [choice], **extra})

    def usage(self, usage: dict[str, Any]) -> str:
        return _sse({**self.base, "choices": [], "usage": usage})


def pieces(text: str) -> list[str]:
    """`text` cut into word-sized pieces that join back to it exactly."""
    return PIECE.findall(text)


async def stream_run(run: Awaitable[RunResult], store: TraceStore, run_id: str, pipeline: str,
                     created: int, *, progress: bool = False, include_usage: bool = False,
                     tools: bool = False) -> AsyncIterator[str]:
    """SSE lines for one run; the run is cancelled if the client goes away (its trace
    then stays unsealed and `refinegraph resume` can finish it)."""
    chunk = ChunkMaker(run_id, pipeline, created)
    task = asyncio.ensure_future(run)
    sent = 0
    try:
        yield chunk({"role": "assistant", "content": ""}, refinegraph={"run_id": run_id})
        while True:
            done = task.done()
            if progress:
                events = store.events(run_id)
                for event in events[sent:]:
                    yield chunk({"content": ""}, refinegraph={"event": event})
                sent = len(events)
            if done:
                break
            await asyncio.wait({task}, timeout=POLL_S)
        try:
            result = task.result()
        except RunFailed as exc:
            log.warning("run %s failed: %s", run_id, exc.cause)
            yield _sse(error_body(502, f"run {run_id} failed: {exc.cause}", code="run_failed",
                                  **failure_extra(run_id, exc.result)))
            return
        except Exception as exc:  # noqa: BLE001 - a server bug: logged, and the client told, not left hanging
            log.exception("run %s: internal error", run_id)
            yield _sse(error_body(500, f"internal error ({type(exc).__name__}); see the server log",
                                  **failure_extra(run_id, None)))
            return
        content, calls = reply_of(result, tools)
        if not content and not calls:
            refused = no_answer(result, {})
            yield _sse(error_body(refused.status, refused.message, code=refused.code, **refused.extra))
            return
        for piece in pieces(content or ""):
            yield chunk({"content": piece})
        for index, call in enumerate(calls or []):
            yield chunk({"tool_calls": [{"index": index, **call}]})
        yield chunk({}, "tool_calls" if calls else "stop", refinegraph=metadata_of(result, pipeline))
        if include_usage:
            yield chunk.usage(usage_of(result))
        yield "data: [DONE]\n\n"
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
