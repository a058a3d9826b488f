"""`refinegraph serve`: the OpenAI-compatible server (needs the `serve` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from refinegraph.cli.common import err, fail

INSTALL_HINT = "pip install 'refinegraph[serve]'"


def missing_serve_deps() -> list[str]:
    """The serve extra's packages that are not installed."""
    import importlib.util

    return [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]


def serve(
    config: Path | None = typer.Option(None, "--config", help="TOML config (default $REFINEGRAPH_HOME/config.toml)."),
    host: str | None = typer.Option(None, "--host", help="Address to bind (default: config server.host, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: config server.port, 8000)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level."),
    insecure: bool = typer.Option(False, "--insecure", help="Listen on a non-loopback address without an API "
                                                            "key (anyone who reaches the port may run pipelines)."),
) -> None:
    """Serve the config's pipelines as an OpenAI-compatible API (/v1/models, /v1/chat/completions)."""
    missing = missing_serve_deps()
    if missing:
        fail(f"`refinegraph serve` needs {' and '.join(missing)}: {INSTALL_HINT}")
    import uvicorn

    from refinegraph.config import ConfigError, load_config
    from refinegraph.server.app import create_app
    from refinegraph.trace.store import TraceStoreError

    try:
        cfg = load_config(config)
        app = create_app(cfg)
    except (ConfigError, TraceStoreError) as exc:
        fail(str(exc))
    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    if not cfg.server.api_key_env and not is_loopback(host) and not insecure:
        fail(f"refusing to listen on {host} without an API key: set [server] api_key_env (requests then need "
             "'Authorization: Bearer <key>'), listen on 127.0.0.1, or pass --insecure")
    names = ", ".join(sorted(app.state.server.pipelines))
    auth = "bearer token required" if cfg.server.api_key_env else "no auth"
    err.print(f"serving {names} on http://{host}:{port}/v1 ({auth})", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: localhost or a loopback address
    (0.0.0.0, ::, a LAN address or any other name is not)."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
