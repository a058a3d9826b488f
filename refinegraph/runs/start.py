"""Starting a run: `run` checks everything it can, records the run, then executes it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic import ValidationError

from refinegraph.budget import Budget
from refinegraph.compiled import compiled_graph
from refinegraph.config import Config, ConfigError, load_config
from refinegraph.context import RunContext
from refinegraph.conversation import check_conversation, last_user_text
from refinegraph.events import Event, RunStarted
from refinegraph.models import Model
from refinegraph.registry import get_graph
from refinegraph.runs.execute import RunResult, _build_models, _close, _execute, _model_names, _model_summary, _owner
from refinegraph.runs.stores import shared_store
from refinegraph.tool_calls import ToolOffer
from refinegraph.trace.store import BaseTraceStore, NullWriter, TraceWriter
from refinegraph.version import __version__


def _check_recordable(graph: str, graph_input: dict[str, Any]) -> None:
    """Refuse, before anything is recorded, an input the trace cannot store (a lone UTF-16
    surrogate, say, from undecodable bytes in argv): it would fail at the run's first event."""
    try:
        pydantic_core.to_json(graph_input)
    except pydantic_core.PydanticSerializationError as exc:
        raise ConfigError(f"the input of graph {graph!r} cannot be recorded: {exc}") from None


def new_run_id() -> str:
    """A fresh run id (callers that must print it on an interrupt make it first)."""
    return uuid.uuid4().hex


async def run(graph: str, task: str | dict[str, Any] | None = None, *, config: Config | None = None,
              params: dict[str, Any] | None = None, budget: Budget | None = None,
              models: dict[str, Model] | None = None, store: BaseTraceStore | None = None,
              trace: bool = True, checkpoint: bool = False, checkpoint_path: Path | None = None,
              run_id: str | None = None, messages: list[dict[str, Any]] | None = None,
              on_event: Callable[[Event], None] | None = None,
              tools: ToolOffer | dict[str, Any] | None = None) -> RunResult:
    """Run `graph` on `task` and return its answer; the trace is written as it goes.

    `on_event` is called with each event as it is written (refinegraph.progress folds them
    into what a status line shows: the node, calls made, tokens spent, retries).

    `messages` is a conversation to run on instead (its last user turn is the task): the
    solver sees it as sent, judging roles quote it, the trace keeps it as a blob. `tools`
    (a ToolOffer, or its fields: tools, tool_choice, parallel_tool_calls) go with the calls
    that answer the conversation; a reply may then be a tool call (refinegraph.tool_calls).

    `models` overrides the config's backends by name (e.g. a test double). Everything
    that can be checked (graph, models, params, input) is checked before the run is
    recorded. The trace alone makes the run resumable; `checkpoint=True` adds LangGraph's
    checkpointer, for graphs that pause on `interrupt()`. With no `store`, the process's
    shared store of the config's location is used (see shared_store).
    """
    spec = get_graph(graph)
    config = config or load_config()
    if messages is not None:
        try:
            messages = check_conversation(messages)
        except ValueError as exc:
            raise ConfigError(f"messages: {exc}") from None
        task = task if task is not None else last_user_text(messages)
    if isinstance(tools, dict):
        try:
            tools = ToolOffer.model_validate(tools)
        except ValidationError as exc:
            raise ConfigError(f"tools: {exc}") from None
    if tools is not None and messages is None:
        raise ConfigError("tools go with a conversation: pass messages=[...] too")
    graph_input = task if isinstance(task, dict) else {spec.input_key: task or ""}
    if not str(graph_input.get(spec.input_key, "")).strip():
        raise ConfigError(f"the input of graph {graph!r} is empty")
    _check_recordable(graph, graph_input)
    params = params or {}
    compiled_graph(graph, params)
    roles = dict(config.roles)
    built = _build_models(config, _model_names(graph, roles, params, config), models)
    budget = budget or Budget()
    run_id = run_id or new_run_id()
    try:
        if trace:
            store = store or shared_store(config)
            writer: Any = TraceWriter(store, run_id, new=True, deferred=True)
            writer.create_run(graph, str(graph_input.get(spec.input_key, graph_input)), owner=_owner())
        else:
            store, writer, checkpoint = None, NullWriter(run_id), False
        ctx = RunContext(run_id=run_id, models=built, roles=roles, writer=writer, budget=budget, config=config,
                         conversation=messages, on_event=on_event, tools=tools)
        ctx.emit(RunStarted(graph=graph, input=graph_input, params=params, roles=roles,
                            models=_model_summary(config, built), budget=budget.limits(), version=__version__,
                            conversation_blob=writer.put_blob(messages) if messages else None,
                            tools_blob=writer.put_blob(tools.request_fields()) if tools else None))
        await writer.commit()  # listed, with its input, before any work
        return await _execute(ctx, graph, graph_input, params, checkpoint=checkpoint,
                              checkpoint_path=checkpoint_path)
    finally:
        await _close(built, models)
