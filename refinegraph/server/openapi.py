"""The server's OpenAPI document: the real request body, every status a route answers, auth.

The chat route reads its body itself (bounded, see body.py), so FastAPI cannot infer it;
the body's schema is ChatRequest's, narrowed to what this server takes (its message limits,
numbers within 64 bits) and split into one body per model with that model's rules
(request_rules.py), so that the server runs every body the document allows and refuses
every other: a client generator or a fuzzer (schemathesis) gets the server's real contract.
`GET /openapi.json` serves it behind the same key as /v1/models, since it names the pipelines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

from refinegraph.config import Config
from refinegraph.server.body import INT_LIMIT
from refinegraph.server.request_rules import REF, RequestShape, model_requests
from refinegraph.server.schemas import ChatRequest

if TYPE_CHECKING:
    from refinegraph.server.pipelines import Pipeline

BEARER = "bearer"


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape; a failed run's also names run_id (and its model_calls, usage)."""

    error: ErrorDetail


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    """null only for a reply that calls tools without words."""
    tool_calls: list[ToolCall] | None = None
    """The calls the run chose, for a request that offered tools."""


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "tool_calls"]


class RunMetadata(BaseModel):
    run_id: str
    answer: str | None
    """The graph's answer (null when none was found: the reply then carries the chosen text)."""
    pipeline: str
    graph: str
    stop_reason: str
    model_calls: int
    cache_hits: int
    retries: int
    fallbacks: dict[str, int]
    cost_usd: float | None
    pending: dict[str, Any] | None = None
    """A run that waits for approval of its SQL: run_id, sql, question (server/approval_routes.py)."""


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    refinegraph: RunMetadata


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    refinegraph: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    pipelines: int


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


AUTH_ERRORS = {401: _error("missing or wrong bearer token (when the server has a key)")}
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatCompletion, "description": "the run's answer; with stream=true, server-sent chunks",
          "content": {"text/event-stream": {"schema": {  # one event: a chunk, an error, or [DONE]
              "type": "object", "required": ["data"],
              "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}},
    400: _error("malformed JSON, wrong types, bad params, a budget over the pipeline's, bad messages, tools "
                "for a graph or model that takes none"),
    **AUTH_ERRORS,
    404: _error("the model names no pipeline of this server"),
    413: _error("body over server.max_body_bytes"),
    415: _error("the body's content type is not JSON"),
    422: _error("the run finished with no answer and no chosen text (e.g. the budget ran out before any "
                "call); the body names its run id and stop reason"),
    502: _error("the run itself failed (a model or back end); the body names its run id"),
}
MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": ModelList}, **AUTH_ERRORS}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": ModelCard}, **AUTH_ERRORS,
                                                   404: _error("no pipeline of that name")}
CHAT_OPERATION = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": REF.format(model="ChatRequest")}}}}}


JSON_VALUE = "JsonValue"
BOUNDED_NUMBER = {"type": "number", "minimum": -INT_LIMIT, "maximum": INT_LIMIT}


def json_value_schema() -> dict[str, Any]:
    """Any JSON value the server takes (body.py): numbers within the signed 64-bit range, at
    any depth. It stands wherever the body is free-form (extra keys, a tool's parameters,
    graph params), so that a schema-valid body is never refused there."""
    ref = {"$ref": REF.format(model=JSON_VALUE)}
    return {"anyOf": [{"type": "string"}, {"type": "boolean"}, {"type": "null"}, BOUNDED_NUMBER,
                      {"type": "array", "items": ref}, {"type": "object", "additionalProperties": ref}],
            "description": "any JSON value, numbers within the signed 64-bit range"}


def _narrow(node: Any) -> None:
    """Numbers within 64 bits and open objects' values JsonValues, as body.py enforces (in
    place, over the whole schema)."""
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            node.setdefault("maximum", INT_LIMIT)
            node.setdefault("minimum", -INT_LIMIT)
        if node.get("type") == "object" and node.get("additionalProperties", True) is True:
            node["additionalProperties"] = {"$ref": REF.format(model=JSON_VALUE)}
        for value in node.values():
            _narrow(value)
    elif isinstance(node, list):
        for value in node:
            _narrow(value)


def request_schemas(config: Config, pipelines: dict[str, Pipeline],
                    takes_tools: Callable[[Config, set[str]], bool]) -> dict[str, Any]:
    """ChatRequest and the models it refers to, as components, narrowed to this server: its
    limits, and for each model what the server takes (server/request_rules.py). ChatRequest
    is a oneOf of one whole body per model (`ChatRequest_<model>`)."""
    settings = config.server
    schema = ChatRequest.model_json_schema(ref_template=REF)
    components = schema.pop("$defs", {})
    props = schema["properties"]
    schema["type"] = "object"  # extra keys are ignored, but still JSON the server takes
    # a user message with text (the last such is the task), within the server's limits
    has_text = {"type": "string", "pattern": r"\S"}
    user = {"type": "object", "required": ["role", "content"],
            "properties": {"role": {"const": "user"}, "content": {"anyOf": [has_text, {
                "type": "array", "contains": {"type": "object", "required": ["text"],
                                              "properties": {"text": has_text}}}]}}}
    props["messages"].update(minItems=1, maxItems=settings.max_messages, contains=user)
    props["n"]["anyOf"] = [{"type": "integer", "minimum": 1, "maximum": 1}, {"type": "null"}]  # one answer
    components["TextPart"]["properties"]["type"]["enum"] = ["text"]
    for branch in components["Message"]["properties"]["content"]["anyOf"]:
        if branch.get("type") == "string":
            branch["maxLength"] = settings.max_message_chars
    shape = RequestShape(schema, components, settings.allow_request_db, settings.databases, takes_tools,
                         sorted(config.models))
    bodies = model_requests(config, pipelines, shape)
    _narrow(bodies)  # each body whole, the graphs' params included
    _narrow(components)  # and the models they refer to
    refs = []
    for i, (title, body) in enumerate(bodies.items()):
        body["title"] = f"a request for {title}"
        name = f"ChatRequest_{i}_" + re.sub(r"[^A-Za-z0-9._-]", "_", title)  # the index: names that differ
        components[name] = body  # only in replaced characters stay apart
        refs.append({"$ref": REF.format(model=name)})
    # a pipeline's name, or GRAPH:UPSTREAM (a 404 when the upstream is unknown), each with its body
    components["ChatRequest"] = {"oneOf": refs, "description": "a pipeline, or GRAPH:UPSTREAM (a graph over a "
                                                               "configured or proxied model), with what it takes"}
    components[JSON_VALUE] = json_value_schema()
    return components


def _validation_is_400(doc: dict[str, Any]) -> None:
    """FastAPI documents a 422 for path parameters; errors.py answers those with a 400."""
    error_ref = {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.get("422", {}).get("description") == "Validation Error":  # FastAPI's, not ours
                del responses["422"]
                responses.setdefault("400", {"description": "invalid request", "content": error_ref})
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def install_openapi(app: FastAPI, *, config: Config, pipelines: dict[str, Pipeline], auth: bool,
                    takes_tools: Callable[[Config, set[str]], bool]) -> None:
    """Make `app.openapi()` return the document described above (built once, then cached)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=__doc__, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(
                request_schemas(config, pipelines, takes_tools))
            if auth:
                doc["components"]["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
            _validation_is_400(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def security(auth: bool) -> dict[str, Any]:
    """An operation's `security` (openapi_extra): the bearer key when the server has one."""
    return {"security": [{BEARER: []}]} if auth else {}
