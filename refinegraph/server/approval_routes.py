"""Approval of text-to-SQL through the server: a run that waits, then a follow-up request.

A pipeline whose params set `approve = true` (graphs sql-greedy, sql-sc, csc-sql) answers
a chat request, once the graph has chosen its SQL, with an empty message and, in the body's
`refinegraph` object, `stop_reason: "awaiting_approval"` and `pending: {run_id, sql, ...}`.
Then:

- `GET /v1/runs/{run_id}/approval`: the SQL that waits (404 no such run, 409 not waiting);
- `POST /v1/runs/{run_id}/approval` with `{"decision": "approve" | "refuse" | "edit",
  "sql": "..." (edit only), "by": "who"}`: continues the run to its end and answers with
  its SQL, rows and answer (200), or why nothing ran (`stop_reason` "refused_by_human" or
  "edit_refused", `sql` null, `refused_sql`, `error`). 400 a malformed decision (the run
  keeps waiting), 409 a run that is not waiting (decided already: one decision wins),
  502 the run failed.

The run id is the whole id (no prefixes); the same API key as the chat route is required.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

from refinegraph import approval
from refinegraph.runner import RunFailed, RunResult
from refinegraph.server import openapi as docs
from refinegraph.server.body import parse_json_object, read_limited
from refinegraph.server.errors import ApiError

if TYPE_CHECKING:
    from refinegraph.server.app import Server

log = logging.getLogger("refinegraph.server")


class ApprovalOutcome(BaseModel):
    """The answer to a decision: the run's end."""

    run_id: str
    stop_reason: str
    sql: str | None
    refused_sql: str | None
    error: str | None
    columns: list[str]
    rows: list[list[Any]]
    answer: str | None
    usage: dict[str, int]
    model_calls: int


_BY = {"type": "string", "minLength": 1, "maxLength": 200, "description": "who decides (recorded)"}
_DECISION_SCHEMA = {"oneOf": [  # human.Decision's rule, so that every body this allows is taken
    {"type": "object", "additionalProperties": False, "required": ["decision"], "properties": {
        "decision": {"enum": ["approve", "refuse"]},
        "sql": {"type": "null", "description": "no statement: sql is for an edit only"}, "by": _BY}},
    {"type": "object", "additionalProperties": False, "required": ["decision", "sql"], "properties": {
        "decision": {"const": "edit"},
        "sql": {"type": "string", "maxLength": 100_000, "pattern": "\\S",
                "description": "the edited statement (not blank); it passes the SQL guard before it runs"},
        "by": _BY}}]}
DECIDE_OPERATION = {"requestBody": {"required": True, "content": {"application/json": {"schema": _DECISION_SCHEMA}}}}
_WAITING_ERRORS: dict[int | str, dict[str, Any]] = {
    **docs.AUTH_ERRORS, 404: docs._error("no run of that id"),
    409: docs._error("the run is not awaiting approval (finished, running, or decided already)")}
SHOW_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": approval.PendingApproval}, **_WAITING_ERRORS,
                                                   400: docs._error("a malformed run id")}
DECIDE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ApprovalOutcome}, **_WAITING_ERRORS,
    400: docs._error("malformed JSON or a malformed decision (the run keeps waiting)"),
    413: docs._error("body over server.max_body_bytes"), 415: docs._error("the body's content type is not JSON"),
    502: docs._error("the run failed after its decision")}


def waits_on_a_person(params: dict[str, Any]) -> bool:
    """Whether a pipeline's runs pause for approval (and so need the checkpointer)."""
    return bool(params.get("approve"))


def check_approval_request(pipeline: str, configured: dict[str, Any], params: dict[str, Any], *,
                           stream: bool) -> None:
    """A request may not turn a pipeline's approval off, nor stream a run that will wait."""
    if waits_on_a_person(configured) and not waits_on_a_person(params):
        raise ApiError(400, f"pipeline {pipeline!r} waits for a person's approval of its SQL; a request "
                            "cannot turn that off", param="refinegraph.params", code="bad_params")
    if waits_on_a_person(params) and stream:
        raise ApiError(400, f"pipeline {pipeline!r} waits for a person's approval of its SQL, which a stream "
                            "cannot carry: send the request with stream false", param="stream")


def with_pending(body: dict[str, Any], result: RunResult) -> dict[str, Any]:
    """A chat-completion body, with what waits for approval where the run waits."""
    waiting = approval.pending(result)
    if waiting is not None:
        body["refinegraph"]["pending"] = waiting.model_dump()
    return body


def outcome(result: RunResult) -> dict[str, Any]:
    state = result.state
    return {"run_id": result.run_id, "stop_reason": result.stop_reason, "sql": state.get("sql"),
            "refused_sql": state.get("refused_sql"), "error": state.get("error"),
            "columns": state.get("columns", []), "rows": state.get("rows", []), "answer": result.answer,
            "usage": result.usage, "model_calls": result.model_calls}


def install_approval_routes(app: FastAPI, server: Server) -> None:
    auth = docs.security(server.api_key is not None)

    def waiting(run_id: str) -> approval.PendingApproval:
        if server.store.run(run_id) is None:
            raise ApiError(404, f"no run {run_id!r}", code="run_not_found")
        try:
            return approval.pending_run(run_id, store=server.store)
        except approval.NotAwaitingApproval as exc:
            raise ApiError(409, str(exc), code="not_awaiting_approval") from None

    @app.get("/v1/runs/{run_id}/approval", response_model=None, responses=SHOW_RESPONSES, openapi_extra=auth)
    async def show_pending(run_id: str, request: Request) -> dict[str, Any]:
        server.check_auth(request)
        return waiting(run_id).model_dump()

    @app.post("/v1/runs/{run_id}/approval", response_model=None, responses=DECIDE_RESPONSES,
              openapi_extra={**DECIDE_OPERATION, **auth})
    async def decide(run_id: str, request: Request) -> dict[str, Any]:
        server.check_auth(request)
        data = parse_json_object(await read_limited(request, server.settings.max_body_bytes),
                                 request.headers.get("content-type"))
        try:
            decision = approval.as_decision({"by": "server client", **data, "via": "server"})
        except approval.DecisionRefused as exc:
            raise ApiError(400, str(exc), code="invalid_decision") from None
        waiting(run_id)
        started = server.store.events(run_id, types={"run_started"})[0]
        models = server.pool.get(set(started["roles"].values()) | set(started["models"]))
        try:
            async with server.semaphore:
                result = await approval.decide(run_id, decision, config=server.config, models=models,
                                               store=server.store)
        except approval.NotAwaitingApproval as exc:
            raise ApiError(409, str(exc), code="not_awaiting_approval") from None
        except RunFailed as exc:
            log.warning("run %s failed after its approval: %s", run_id, exc.cause)
            raise ApiError(502, f"run {run_id} failed: {exc.cause}", code="run_failed") from None
        return outcome(result)


__all__ = ["check_approval_request", "install_approval_routes", "waits_on_a_person", "with_pending"]
