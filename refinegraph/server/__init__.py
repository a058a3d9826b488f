"""`refinegraph serve`: refinegraph pipelines behind an OpenAI-compatible HTTP API.

`GET /v1/models` lists the pipelines, `POST /v1/chat/completions` runs one (the request's
`model` names it). Build the app with `create_app(config, models=..., store=...)`; it
needs the `serve` extra (fastapi, uvicorn).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The FastAPI app (imported lazily so the package imports without fastapi)."""
    from refinegraph.server.app import create_app as build

    return build(*args, **kwargs)
