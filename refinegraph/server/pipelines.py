"""Pipelines (named graph + params + budget + roles) and turning a request into a run.

A request's `model` picks a declared pipeline by its exact name. Without `[pipelines]`
in the config, every registered graph is served under its own name, with the config's
roles (the embedded model when there is no config).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from refinegraph.compiled import check_json_params
from refinegraph.config import BudgetSpec, Config, ConfigError, PipelineSpec
from refinegraph.conversation import last_user_text
from refinegraph.models import Model, build_model
from refinegraph.registry import UnknownGraph, get_graph, list_graphs
from refinegraph.runner import compiled_graph
from refinegraph.server.approval_routes import check_approval_request
from refinegraph.server.errors import ApiError
from refinegraph.server.schemas import ChatRequest
from refinegraph.tool_calls import ToolOffer
from refinegraph.tools.code.programs import entry_point_of

log = logging.getLogger("refinegraph.server")


@dataclass(frozen=True)
class Pipeline:
    name: str
    spec: PipelineSpec
    config: Config
    """The server's config with this pipeline's roles in force."""
    description: str = ""

    def card(self, created: int) -> dict[str, Any]:
        """Its /v1/models entry."""
        return {"id": self.name, "object": "model", "created": created, "owned_by": "refinegraph",
                "refinegraph": {"graph": self.spec.graph, "description": self.description,
                                "params": self.spec.params, "budget": self.spec.budget.model_dump(),
                                "roles": self.config.roles}}


def load_pipelines(config: Config) -> dict[str, Pipeline]:
    """The pipelines to serve, checked now (graph known, params valid) so a bad config fails at start."""
    specs = config.pipelines or {g.name: PipelineSpec(graph=g.name) for g in list_graphs()}
    pipelines = {}
    for name, spec in specs.items():
        if ":" in name:  # GRAPH:UPSTREAM is split at the first colon
            raise ConfigError(f"pipeline {name!r}: a pipeline name has no colon (model = \"GRAPH:UPSTREAM\" "
                              "names a graph over an upstream model)")
        try:
            graph = get_graph(spec.graph)
        except UnknownGraph as exc:
            raise ConfigError(f"pipeline {name!r}: {exc}") from None
        try:
            compiled_graph(spec.graph, spec.params)
        except ConfigError as exc:
            raise ConfigError(f"pipeline {name!r}: {exc}") from None
        roles = {"default": config.model_for_role("default"), **spec.roles} if spec.roles else dict(config.roles)
        for role, model in roles.items():
            if model not in config.models:
                raise ConfigError(f"pipeline {name!r}: role {role!r} names unknown model {model!r}; "
                                  f"known models: {', '.join(sorted(config.models))}")
        cfg = config.model_copy(update={"roles": roles})
        called = graph.uses_models(spec.params, cfg) if graph.uses_models else []
        unknown = sorted(set(called) - set(config.models))
        if unknown:
            raise ConfigError(f"pipeline {name!r}: graph {spec.graph!r} with these params calls models the config "
                              f"does not define: {', '.join(unknown)}; "
                              f"known models: {', '.join(sorted(config.models))}")
        pipelines[name] = Pipeline(name, spec, cfg, spec.description or graph.description)
    return pipelines


class ModelPool:
    """One backend per model name, shared by runs: the embedded model's server starts once.

    Backends of configured models live for the server's life. Pass-through backends (a
    `[proxy]` server's model ids, one per id a request names) are kept for the
    `max_passthrough` ids used last (least recently used first out): an evicted one is
    closed as soon as no run holds it (`acquire` ... `release`), so a server that sees many
    ids keeps a bounded number of HTTP clients. Supplied ones (test doubles) are used as
    given and never closed.
    """

    def __init__(self, config: Config, supplied: dict[str, Model] | None = None,
                 max_passthrough: int | None = None):
        self.config = config
        self.supplied = dict(supplied or {})
        self.max_passthrough = max_passthrough or config.proxy.max_clients
        self.built: dict[str, Model] = {}
        self.passthrough: OrderedDict[str, Model] = OrderedDict()
        self.holders: Counter[int] = Counter()
        """Runs holding each pass-through backend (by id()), between acquire and release."""
        self.retired: dict[int, Model] = {}
        """Evicted backends still held by a run: closed at their last release."""
        self.evictions = 0

    def get(self, names: set[str], config: Config | None = None) -> dict[str, Model]:
        """The backends of `names`, specified by `config` (a proxied pipeline's) or the server's.
        Pass-through ones are not held: use acquire for a run."""
        config = config or self.config
        out = {}
        for name in sorted(names):
            if name in self.supplied:
                out[name] = self.supplied[name]
            elif name in self.config.models or name not in config.models:
                if name not in self.built:
                    self.built[name] = build_model(name, config.spec(name))
                out[name] = self.built[name]
            else:
                model = self.passthrough.pop(name, None) or build_model(name, config.spec(name))
                self.passthrough[name] = model  # the most recently used last
                out[name] = model
        return out

    async def acquire(self, names: set[str], config: Config | None = None) -> dict[str, Model]:
        """get(), the pass-through backends held until release(); the pool trimmed to its bound."""
        models = self.get(names, config)
        for name, model in models.items():
            if self.passthrough.get(name) is model:
                self.holders[id(model)] += 1
        while len(self.passthrough) > self.max_passthrough:
            _, evicted = self.passthrough.popitem(last=False)
            self.evictions += 1
            if self.holders[id(evicted)]:
                self.retired[id(evicted)] = evicted
            else:
                self.holders.pop(id(evicted), None)
                await evicted.aclose()
        return models

    async def release(self, models: dict[str, Model]) -> None:
        """A run is done with `models`: an evicted backend it was the last to hold is closed."""
        for model in models.values():
            key = id(model)
            if not self.holders[key]:
                continue
            self.holders[key] -= 1
            if not self.holders[key]:
                del self.holders[key]
                retired = self.retired.pop(key, None)
                if retired is not None:
                    await retired.aclose()

    async def aclose(self) -> None:
        for model in [*self.built.values(), *self.passthrough.values(), *self.retired.values()]:
            await model.aclose()
        self.built.clear()
        self.passthrough.clear()
        self.retired.clear()
        self.holders.clear()


@dataclass
class PreparedRun:
    pipeline: Pipeline
    graph_input: dict[str, Any]
    params: dict[str, Any]
    limits: dict[str, Any]
    """Budget(**limits) is made when the run starts, so time queued for a slot is not charged."""
    model_names: set[str] = field(default_factory=set)
    messages: list[dict[str, Any]] | None = None
    """The request's conversation (None for SQL graphs, whose input is the question)."""
    tools: ToolOffer | None = None
    """The request's tools, tool_choice and parallel_tool_calls, when it offered tools."""


def task_of(request: ChatRequest, max_messages: int, max_chars: int) -> str:
    """The last user message with text: the run's task (the whole conversation goes with it).
    An empty user message after it (a client's placeholder) is sent on, not taken as the task."""
    if not request.messages:
        raise ApiError(400, "messages is empty: send at least one user message", param="messages")
    if len(request.messages) > max_messages:
        raise ApiError(400, f"too many messages ({len(request.messages)}); this server takes at most {max_messages}",
                       param="messages")
    texts = []
    for i, message in enumerate(request.messages):
        try:
            text = message.text()
        except ValueError as exc:
            raise ApiError(400, f"messages.{i}: {exc}", param=f"messages.{i}.content") from None
        if len(text) > max_chars:
            raise ApiError(400, f"messages.{i} has {len(text)} characters; this server takes at most {max_chars}",
                           param=f"messages.{i}.content")
        texts.append((message.role, text))
    if not any(role == "user" for role, _ in texts):
        raise ApiError(400, "no user message: the last user message with text is the task", param="messages")
    task = last_user_text([{"role": role, "content": text} for role, text in texts])
    if not task:
        raise ApiError(400, "every user message is empty: the last user message with text is the task",
                       param="messages")
    return task


def _budget(pipeline: Pipeline, asked: BudgetSpec) -> dict[str, Any]:
    """The request's budget within the pipeline's: each limit defaults to it and may not exceed it."""
    ceiling = pipeline.spec.budget
    limits = {}
    for key in ("tokens", "calls", "seconds"):
        cap, want = getattr(ceiling, key), getattr(asked, key)
        if want is not None and cap is not None and want > cap:
            raise ApiError(400, f"budget.{key}={want} exceeds pipeline {pipeline.name!r}'s maximum of {cap}",
                           param=f"refinegraph.budget.{key}", code="budget_too_large")
        limits[f"max_{key}"] = want if want is not None else cap
    return limits


def per_call_tokens(request: ChatRequest) -> dict[str, Any]:
    """OpenAI's max_tokens / max_completion_tokens as the run's per-call ceiling."""
    asked = {v for v in (request.max_tokens, request.max_completion_tokens) if v is not None}
    if len(asked) > 1:
        raise ApiError(400, f"max_tokens={request.max_tokens} and max_completion_tokens="
                            f"{request.max_completion_tokens} differ: send one", param="max_completion_tokens")
    return {"max_tokens_per_call": asked.pop()} if asked else {}


def _check_usable(pipeline: Pipeline, db: str) -> None:
    """The database opens under the config's [sql] limits (a PostgreSQL role is checked too).
    Its error names no path and says nothing of whether a file exists: the request did not
    choose a path (only a configured name), so a failure is the server's, a 503."""
    from refinegraph.tools.sql import connect
    from refinegraph.tools.sql.engines import PreflightError

    limits = pipeline.config.sql
    try:
        connect(db, timeout_s=limits.timeout_s, max_rows=limits.max_rows, max_bytes=limits.max_bytes,
                memory_mb=limits.memory_mb, allow_privileged_role=limits.allow_privileged_postgres_role).preflight()
    except (ValueError, OSError, PreflightError) as exc:  # OSError: also a path too long for the file system
        log.error("pipeline %r: its database is unusable: %s", pipeline.name, exc)
        raise ApiError(503, f"pipeline {pipeline.name!r}: its database is unavailable (see the server's log)",
                       code="database_unavailable") from None


def _sql_input(pipeline: Pipeline, request: ChatRequest, allow_request_db: bool,
               databases: dict[str, str]) -> dict[str, Any]:
    extra = request.refinegraph
    if extra.db is not None and pipeline.spec.db is not None:
        raise ApiError(400, f"pipeline {pipeline.name!r} has its database fixed by the server; do not send db",
                       param="refinegraph.db")
    if extra.db is not None and not allow_request_db:
        raise ApiError(400, "this server does not let a request name its database (server.allow_request_db)",
                       param="refinegraph.db")
    if extra.db is not None and extra.db not in databases:
        # a name, never a path or URL: the message is the same whether or not such a file exists
        known = ", ".join(sorted(databases)) or "(none configured)"
        raise ApiError(400, f"refinegraph.db names no database of this server; send one of: {known}",
                       param="refinegraph.db")
    db = pipeline.spec.db or (databases[extra.db] if extra.db is not None else None)
    if not db:
        hint = (f'send one of its database names as "refinegraph": {{"db": NAME}} ({", ".join(sorted(databases))})'
                if allow_request_db and databases else "the server's config fixes none for it (pipelines.NAME.db)")
        raise ApiError(400, f"pipeline {pipeline.name!r} runs SQL graph {pipeline.spec.graph!r}: {hint}",
                       param="refinegraph.db")
    _check_usable(pipeline, db)
    return {"db": db, **({"evidence": extra.evidence} if extra.evidence else {})}


def tool_offer(pipeline: Pipeline, request: ChatRequest) -> tuple[ToolOffer | None, dict[str, Any]]:
    """The request's tools and the params its graph takes to answer with tool calls, or
    the 400 that says why it cannot (a graph that takes no tools, a conflicting answer type)."""
    if not request.tools:
        if request.tool_choice is not None or request.parallel_tool_calls is not None:
            raise ApiError(400, "tool_choice and parallel_tool_calls need tools", param="tools")
        return None, {}
    spec = get_graph(pipeline.spec.graph)
    if spec.tool_params is None:
        takers = ", ".join(g.name for g in list_graphs() if g.tool_params is not None)
        raise ApiError(400, f"pipeline {pipeline.name!r} runs graph {pipeline.spec.graph!r}, which takes no tools; "
                            f"these graphs do: {takers}", param="tools", code="tools_unsupported")
    for key, value in spec.tool_params.items():
        asked = request.refinegraph.params.get(key, value)
        if asked != value:
            raise ApiError(400, f"with tools, graph {spec.name!r} runs with {key}={value!r}; the request asked "
                                f"for {asked!r}", param=f"refinegraph.params.{key}", code="bad_params")
    choice = request.tool_choice
    offer = ToolOffer(tools=[t.model_dump(exclude_none=True) for t in request.tools],
                      tool_choice=choice.model_dump() if choice is not None and not isinstance(choice, str) else choice,
                      parallel_tool_calls=request.parallel_tool_calls)
    return offer, dict(spec.tool_params)


def prepare(pipeline: Pipeline, request: ChatRequest, *, max_messages: int, max_chars: int,
            allow_request_db: bool, databases: dict[str, str] | None = None) -> PreparedRun:
    """Everything checked before a run is recorded: input, params, budget, database."""
    if request.n not in (None, 1):
        raise ApiError(400, f"n={request.n}: a pipeline returns one answer; sample inside it with "
                            'refinegraph.params (e.g. {"n": 5})', param="n")
    task = task_of(request, max_messages, max_chars)
    spec = get_graph(pipeline.spec.graph)
    graph_input: dict[str, Any] = {spec.input_key: task}
    messages = None
    if spec.input_key == "question":
        graph_input.update(_sql_input(pipeline, request, allow_request_db, databases or {}))
    elif request.refinegraph.db is not None or request.refinegraph.evidence is not None:
        raise ApiError(400, f"db and evidence apply to SQL graphs only; pipeline {pipeline.name!r} runs "
                            f"{pipeline.spec.graph!r}", param="refinegraph")
    else:
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
    if spec.tests_a_function and not entry_point_of(task):
        raise ApiError(400, f"graph {spec.name!r} tests a function the task defines: put its signature "
                            "(def NAME(...): with its docstring) in the last user message", param="messages")
    tools, tool_params = tool_offer(pipeline, request)
    params = {**pipeline.spec.params, **request.refinegraph.params, **tool_params}
    check_approval_request(pipeline.name, pipeline.spec.params, params, stream=bool(request.stream))
    try:
        check_json_params(pipeline.spec.graph, pipeline.spec.params, {**request.refinegraph.params, **tool_params})
        compiled_graph(pipeline.spec.graph, params)
    except ConfigError as exc:
        raise ApiError(400, str(exc), param="refinegraph.params", code="bad_params") from None
    names = set(pipeline.config.roles.values())
    if spec.uses_models:
        names |= set(spec.uses_models(params, pipeline.config))
    unknown = sorted(n for n in names if n not in pipeline.config.models)
    if unknown:
        raise ApiError(400, f"these params name models the server does not define: {', '.join(unknown)}",
                       param="refinegraph.params")
    limits = {**_budget(pipeline, request.refinegraph.budget), **per_call_tokens(request)}
    return PreparedRun(pipeline, graph_input, params, limits, names,
                       messages, tools)
