"""The FastAPI app: auth, body limits, /v1/models, /v1/chat/completions.

Status codes: 401 missing or wrong bearer token (when `[server] api_key_env` is set);
413 body over `server.max_body_bytes`; 415 a content type other than JSON; 404 unknown
pipeline (the message lists the known ones); 400 malformed JSON (also NaN, integers past
64 bits, lone surrogates, nesting past 64 levels), wrong types, bad params, budget over the
pipeline's, empty messages, a database name the config does not list; 502 the run itself failed
(a model or back end), naming its run id; 503 a pipeline's database is unusable (the log says why).
No run is recorded for a request refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from refinegraph.budget import Budget
from refinegraph.config import Config, ConfigError, load_config
from refinegraph.models import Model
from refinegraph.registry import get_graph
from refinegraph.runner import RunFailed, RunResult, default_store, run
from refinegraph.server import openapi as docs
from refinegraph.server.approval_routes import install_approval_routes, waits_on_a_person, with_pending
from refinegraph.server.body import parse_json_object, read_limited
from refinegraph.server.errors import ApiError, error_response, install_handlers, validation_message
from refinegraph.server.pipelines import ModelPool, Pipeline, PreparedRun, load_pipelines, prepare
from refinegraph.server.responses import completion_body, failure_extra, has_reply, no_answer
from refinegraph.server.schemas import ChatRequest
from refinegraph.server.streaming import stream_run
from refinegraph.server.upstream import proxied_pipeline, proxy_cards, split_name
from refinegraph.trace.redact import register_secret
from refinegraph.trace.store import TraceStore

log = logging.getLogger("refinegraph.server")
RUN_HEADER = "x-refinegraph-run-id"


class Server:
    """What the routes share: pipelines, models, store, the run semaphore, the key."""

    def __init__(self, config: Config, models: dict[str, Model] | None, store: TraceStore | None):
        self.config = config
        self.settings = config.server
        self.pipelines: dict[str, Pipeline] = load_pipelines(config)
        for name, pipeline in sorted(self.pipelines.items()):
            if (get_graph(pipeline.spec.graph).input_key == "question" and pipeline.spec.db is None
                    and not (self.settings.allow_request_db and self.settings.databases)):
                log.warning("pipeline %r runs SQL graph %r with no database: set pipelines.%s.db, or "
                            "[server] allow_request_db with databases; until then every request to it gets a 400 "
                            "(and the OpenAPI document leaves it out)", name, pipeline.spec.graph, name)
        self.pool = ModelPool(config, models)
        self.owns_store = store is None
        self.store = store or default_store(config)
        self.created = int(time.time())
        self.semaphore = asyncio.Semaphore(self.settings.max_concurrent_runs)
        self.api_key: str | None = None
        if self.settings.api_key_env:
            self.api_key = os.environ.get(self.settings.api_key_env)
            register_secret(self.api_key)  # never in a trace or a log, even if a message echoes it
            if not self.api_key:
                raise ConfigError(f"[server] api_key_env names {self.settings.api_key_env}, which is not set "
                                  "(or empty): set it, or remove api_key_env to serve without auth")

    def takes_tools(self, config: Config, names: set[str]) -> bool:
        """Whether every model named can pass tools on: what models_for checks per request,
        asked of the same backends (built, not started) for the OpenAPI document."""
        try:
            models = self.pool.get(names, config)
        except ConfigError:  # e.g. an API key variable unset: such a request gets a 502 anyway
            return False
        return all(getattr(m, "supports_tools", False) for m in models.values())

    def check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <key>'", code="missing_api_key",
                           headers={"www-authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "invalid API key", code="invalid_api_key", headers={"www-authenticate": "Bearer"})

    async def read_body(self, request: Request) -> ChatRequest:
        """The body parsed and validated, read no further than the size limit (see body.py)."""
        body = await read_limited(request, self.settings.max_body_bytes)
        data = parse_json_object(body, request.headers.get("content-type"))
        try:
            return ChatRequest.model_validate(data)
        except ValidationError as exc:
            raise ApiError(400, validation_message(exc), code="invalid_request") from None

    def pipeline(self, name: str) -> Pipeline:
        if name not in self.pipelines and split_name(name) is not None:
            return proxied_pipeline(self.config, name)
        if name not in self.pipelines:
            raise ApiError(404, f"unknown model {name!r}: it names no pipeline of this server; known: "
                                f"{', '.join(sorted(self.pipelines))}", param="model", code="model_not_found")
        return self.pipelines[name]

    def prepare(self, request: ChatRequest) -> PreparedRun:
        pipeline = self.pipeline(request.model)
        s = self.settings
        try:
            return prepare(pipeline, request, max_messages=s.max_messages, max_chars=s.max_message_chars,
                           allow_request_db=s.allow_request_db, databases=s.databases)
        except (ValueError, TypeError, KeyError) as exc:  # an unforeseen check: still the request's fault
            log.warning("request refused by an unexpected validation path", exc_info=exc)
            raise ApiError(400, str(exc), code="invalid_request") from None

    async def models_for(self, prepared: PreparedRun) -> dict[str, Model]:
        """The run's backends, held until execute() ends (see ModelPool); a request with tools
        whose models cannot take them is a 400 before anything runs."""
        try:
            models = await self.pool.acquire(prepared.model_names, prepared.pipeline.config)
        except ConfigError as exc:  # e.g. a model whose API key variable is unset: not the request's fault
            log.error("cannot build a model: %s", exc)
            raise ApiError(502, f"a model of pipeline {prepared.pipeline.name!r} is unavailable: {exc}",
                           code="model_unavailable") from None
        unable = sorted(f"{name!r} (backend {m.backend})" for name, m in models.items()
                        if not getattr(m, "supports_tools", False))
        if prepared.tools is not None and unable:
            await self.pool.release(models)
            raise ApiError(400, f"pipeline {prepared.pipeline.name!r} cannot pass tools on: its models "
                                f"{', '.join(unable)} take none; tool calls reach models of the openai backend",
                           param="tools", code="tools_unsupported")
        return models

    async def execute(self, prepared: PreparedRun, models: dict[str, Model], run_id: str) -> RunResult:
        """Run under the concurrency bound, on the shared model backends (released at the end)."""
        try:
            async with self.semaphore:
                return await run(prepared.pipeline.spec.graph, prepared.graph_input,
                                 config=prepared.pipeline.config, params=prepared.params,
                                 budget=Budget(**prepared.limits), models=models, store=self.store,
                                 checkpoint=self.settings.checkpoint or waits_on_a_person(prepared.params),
                                 run_id=run_id, messages=prepared.messages, tools=prepared.tools)
        finally:
            await self.pool.release(models)


def create_app(config: Config | None = None, *, models: dict[str, Model] | None = None,
               store: TraceStore | None = None) -> FastAPI:
    """The server for `config` (default: load_config()). `models` overrides backends by
    name (test doubles); `store` is the trace store (default: $REFINEGRAPH_HOME's)."""
    server = Server(config or load_config(), models, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await server.pool.aclose()
        if server.owns_store:
            server.store.close()

    app = FastAPI(title="refinegraph", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = server
    install_handlers(app)
    auth = docs.security(server.api_key is not None)
    docs.install_openapi(app, config=server.config, pipelines=server.pipelines, auth=bool(auth),
                         takes_tools=server.takes_tools)

    @app.get("/healthz", response_model=docs.Health)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "pipelines": len(server.pipelines)}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        server.check_auth(request)  # it names the pipelines, as /v1/models does
        return JSONResponse(app.openapi())

    @app.get("/v1/models", response_model=None, responses=docs.MODELS_RESPONSES, openapi_extra=auth)
    async def list_models(request: Request) -> dict[str, Any]:
        server.check_auth(request)
        cards = [p.card(server.created) for _, p in sorted(server.pipelines.items())]
        return {"object": "list", "data": cards + proxy_cards(server.config, server.created)}

    @app.get("/v1/models/{name}", response_model=None, responses=docs.MODEL_RESPONSES, openapi_extra=auth)
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        server.check_auth(request)
        return server.pipeline(name).card(server.created)

    @app.post("/v1/chat/completions", response_model=None, responses=docs.CHAT_RESPONSES,
              openapi_extra={**docs.CHAT_OPERATION, **auth})
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        server.check_auth(request)
        body = await server.read_body(request)
        prepared = server.prepare(body)
        models = await server.models_for(prepared)
        run_id = uuid.uuid4().hex
        created = int(time.time())
        headers = {RUN_HEADER: run_id}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = stream_run(server.execute(prepared, models, run_id), server.store, run_id, body.model, created,
                                progress=body.refinegraph.progress, include_usage=include_usage,
                                tools=prepared.tools is not None)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        try:
            result = await server.execute(prepared, models, run_id)
        except RunFailed as exc:
            log.warning("run %s failed: %s", run_id, exc.cause)
            # the runner already retried the model; a client retry would only record another failed run
            return error_response(ApiError(502, f"run {run_id} failed: {exc.cause}", code="run_failed",
                                           headers={**headers, "x-should-retry": "false"},
                                           extra=failure_extra(run_id, exc.result)))
        if result.stop_reason.startswith("awaiting_"):  # waits on a person: the pending decision, not an answer
            return JSONResponse(with_pending(completion_body(result, body.model, created), result), headers=headers)
        tools = prepared.tools is not None
        if not has_reply(result, tools):
            return error_response(no_answer(result, headers))
        return JSONResponse(completion_body(result, body.model, created, tools=tools), headers=headers)

    install_approval_routes(app, server)
    return app
