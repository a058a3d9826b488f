"""OpenAI-style error bodies, and the handlers that keep bad requests out of the 5xx range."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("refinegraph.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 409: "invalid_request_error", 413: "request_too_large",
          415: "invalid_request_error", 422: "invalid_request_error",
          502: "upstream_error"}


class ApiError(Exception):
    """A request answered with `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers, self.extra = headers or {}, extra or {}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """{"error": {...}}: what the openai client reads into its APIError."""
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code, **extra}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message, exc.code, exc.param, **exc.extra),
                        status_code=exc.status, headers=exc.headers)


def validation_message(exc: ValidationError | RequestValidationError, prefix: str = "") -> str:
    """Pydantic's errors as one readable line: `messages.0.role: Input should be ...`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{prefix}{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or str(exc)


def install_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI-style body; request problems are 4xx, never 5xx."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(400, validation_message(exc), code="invalid_request"))

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        log.warning("request rejected by an unexpected validation path", exc_info=exc)
        return error_response(ApiError(400, validation_message(exc), code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; this server offers /v1/models and " \
                      "/v1/chat/completions"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error while serving %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, f"internal error ({type(exc).__name__}); see the server log"),
                            status_code=500)
