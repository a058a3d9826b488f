"""`model = "GRAPH:UPSTREAM"`: any registered graph over any upstream model, by name.

The name splits at its first colon (graph names have none; upstream ids may, as in
`llama3:8b`). UPSTREAM is a model the config names, or, when the config's `[proxy]`
names an upstream server, any model id of that server, passed through as an `openai`
backend. A comma list (`acar:cheap,strong`) names the graph's `models` param. One
lookup each for the graph and the models, no chain of prefix rules.
"""

from __future__ import annotations

from typing import Any

from refinegraph.config import Config, ModelSpec, PipelineSpec
from refinegraph.registry import UnknownGraph, get_graph, list_graphs
from refinegraph.server.errors import ApiError
from refinegraph.server.pipelines import Pipeline


def split_name(name: str) -> tuple[str, str] | None:
    """(graph, upstream) of a `GRAPH:UPSTREAM` name, None for a plain one."""
    graph, sep, upstream = name.partition(":")
    return (graph, upstream) if sep else None


def upstream_spec(config: Config, model_id: str) -> ModelSpec:
    """The config's model of that name, else the `[proxy]` server's model of that id."""
    if model_id in config.models:
        return config.models[model_id]
    proxy = config.proxy
    if proxy.base_url is None:
        raise ApiError(404, f"unknown upstream model {model_id!r}: the config names no such model and no [proxy] "
                            f"server; known models: {', '.join(sorted(config.models))}",
                       param="model", code="model_not_found")
    return ModelSpec(backend="openai", base_url=proxy.base_url, model=model_id, api_key_env=proxy.api_key_env,
                     timeout_s=proxy.timeout_s, supports_json_schema=proxy.supports_json_schema)


def proxied_pipeline(config: Config, name: str) -> Pipeline:
    """The pipeline that `name` (GRAPH:UPSTREAM) asks for: the graph with every role played by
    the (first) upstream model, under `[proxy] budget` as the ceiling of a request's."""
    parts = split_name(name)
    assert parts is not None
    graph_name, upstream = parts
    try:
        graph = get_graph(graph_name)
    except UnknownGraph as exc:
        raise ApiError(404, f"unknown model {name!r}: {exc}", param="model", code="model_not_found") from None
    ids = upstream.split(",") if upstream else []
    if not ids or not all(i.strip() for i in ids):
        raise ApiError(404, f"model {name!r} names no upstream model after {graph_name + ':'!r}",
                       param="model", code="model_not_found")
    models = {**config.models, **{i: upstream_spec(config, i) for i in ids}}
    params = {"models": ids} if len(ids) > 1 else {}
    spec = PipelineSpec(graph=graph_name, params=params, budget=config.proxy.budget)
    cfg = config.model_copy(update={"models": models, "roles": {"default": ids[0]}})
    return Pipeline(name, spec, cfg, graph.description)


def proxy_cards(config: Config, created: int) -> list[dict[str, Any]]:
    """/v1/models entries of the `GRAPH:` forms: each graph over each configured model (a
    `[proxy]` server's ids are its own to list; `GRAPH:<its id>` takes any of them)."""
    cards = []
    for graph in list_graphs():
        for model in sorted(config.models):
            cards.append({"id": f"{graph.name}:{model}", "object": "model", "created": created,
                          "owned_by": "refinegraph",
                          "refinegraph": {"graph": graph.name, "description": graph.description, "upstream": model,
                                          "proxy": config.proxy.base_url is not None}})
    return cards
