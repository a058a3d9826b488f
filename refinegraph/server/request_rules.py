"""What a chat request may send for each model the server answers, as JSON Schema.

The server checks a request against the pipeline (or `GRAPH:UPSTREAM` form) it names: the
graph's own params model, the pipeline's budget as the ceiling, `db` and `evidence` for SQL
graphs only, tools for graphs and models that take them, approval that a stream cannot
carry. The OpenAPI document's request body is a oneOf of one whole body per model (and per
case those checks split: with or without tools, waiting for approval or not), made here from
the same specs the checks read, so that a body the document allows is a body the server
takes (schemathesis' positive_data_acceptance), and one it forbids is refused.

A params model whose fields constrain each other (SETS' step limit, step search's beam
width) states that in a classmethod `schema_rules(defaults) -> list[schema]` beside its
validator; `defaults` are the values in force when a request leaves a field out. What JSON
Schema cannot state, the document promises more narrowly (ACAR's mode_params as {}, one of
the two token fields); code-filter, whose task must define a function, is left out of the
document: docs/serving.md lists these.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from refinegraph.config import BudgetSpec, Config, PipelineSpec
from refinegraph.registry import MODEL_NAME, GraphSpec, get_graph, list_graphs

if TYPE_CHECKING:
    from refinegraph.server.pipelines import Pipeline

REF = "#/components/schemas/{model}"


def _null() -> dict[str, Any]:
    """A fresh {"type": "null"} (never one dict shared by many places of the document)."""
    return {"type": "null"}


def params_schema(graph: GraphSpec, fixed: dict[str, Any], components: dict[str, Any],
                  model_names: list[str]) -> dict[str, Any]:
    """The params a request may send: the graph's params model, with the pipeline's own params
    as the defaults its cross-field rules assume (nested models go to `components`)."""
    schema = graph.params_json_schema(fixed, ref_template=REF)
    components.update(schema.pop("$defs", {}))
    for field in schema.get("properties", {}).values():  # e.g. ACAR's models: the config's names
        if field.pop(MODEL_NAME, False):
            for branch in field.get("anyOf", [field]):
                target = branch.get("items", branch) if branch.get("type") == "array" else branch
                if target.get("type") == "string":
                    target["enum"] = sorted(model_names)
    schema.pop("required", None)  # the pipeline may fix what the model requires
    return schema


def _budget_schema(base: dict[str, Any], ceiling: BudgetSpec) -> dict[str, Any]:
    """RequestBudget's schema under the pipeline's budget: each limit at most its ceiling."""
    schema = copy.deepcopy(base)
    for key in ("tokens", "calls", "seconds"):
        cap = getattr(ceiling, key)
        if cap is not None:
            for branch in schema["properties"][key].get("anyOf", [schema["properties"][key]]):
                if branch.get("type") in ("integer", "number"):
                    branch["maximum"] = min(cap, branch.get("maximum", cap))
    return schema


def _db_schema(spec: PipelineSpec, allow_request_db: bool, databases: dict[str, str]
               ) -> tuple[dict[str, Any], bool] | None:
    """`db` for a SQL graph and whether a request must send it: absent when the pipeline fixes
    it, else one of the server's names; None when no request can give this pipeline a
    database (it answers 400 to every one)."""
    if spec.db is not None:
        return _null(), False
    if allow_request_db and databases:
        return {"type": "string", "enum": sorted(databases)}, True
    return None


def _require(schema: dict[str, Any], *keys: str) -> None:
    schema["required"] = list(dict.fromkeys([*schema.get("required", []), *keys]))




def _tool_variants(graph: GraphSpec, request: dict[str, Any], takes_tools: bool) -> list[dict[str, Any]]:
    """The body without tools, and for a graph that takes them over models that can pass them
    on (`takes_tools`), the body with them (its params then fixed as the graph answers with
    tool calls, e.g. answer = tool_call)."""
    without = copy.deepcopy(request)
    without["properties"].update(tools=_null(), tool_choice=_null(), parallel_tool_calls=_null())
    if graph.tool_params is None or not takes_tools:
        return [without]
    with_tools = copy.deepcopy(request)
    _require(with_tools, "tools")
    with_tools["properties"]["tools"] = next(branch for branch in request["properties"]["tools"]["anyOf"]
                                             if branch.get("type") == "array")
    params = with_tools["properties"]["refinegraph"]["properties"]["params"]
    for key, value in graph.tool_params.items():
        params["properties"][key] = {**params["properties"].get(key, {}), "const": value}
    return [without, with_tools]


def _approval_variants(configured: dict[str, Any], request: dict[str, Any]) -> list[dict[str, Any]]:
    """A run that waits for approval is not streamed; a pipeline that waits keeps waiting."""
    waits = copy.deepcopy(request)
    waits["properties"]["stream"] = {"type": "boolean", "const": False}
    waits["properties"]["refinegraph"]["properties"]["params"]["properties"]["approve"] = {"type": "boolean",
                                                                                          "const": True}
    if configured.get("approve"):
        return [waits]
    extra = waits["properties"]["refinegraph"]
    _require(extra, "params")
    _require(extra["properties"]["params"], "approve")
    _require(waits, "refinegraph")
    plain = copy.deepcopy(request)
    plain["properties"]["refinegraph"]["properties"]["params"]["properties"]["approve"] = {"type": "boolean",
                                                                                          "const": False}
    return [plain, waits]


@dataclass(frozen=True)
class RequestShape:
    """What every model's request shares (components already narrowed to the server)."""

    request: dict[str, Any]
    """ChatRequest's schema without per-model rules."""
    components: dict[str, Any]
    allow_request_db: bool
    databases: dict[str, str]
    takes_tools: Callable[[Config, set[str]], bool]
    """Whether every model named can pass tools on (the server's backends, under a config)."""
    model_names: list[str]
    """The config's models: what a params field marked MODEL_NAME may name."""


def model_request(shape: RequestShape, model: dict[str, Any], graph: GraphSpec, spec: PipelineSpec,
                  budget: BudgetSpec, takes_tools: bool) -> list[dict[str, Any]]:
    """The request bodies for one model (a pipeline, or a graph's GRAPH:UPSTREAM forms), one
    per case a conditional would otherwise split (with or without tools, waiting for
    approval or not), each excluding the others; none when no request can run it."""
    request = copy.deepcopy(shape.request)
    request["properties"]["model"] = model
    extra = copy.deepcopy(shape.components["RefinegraphExtra"])
    props = extra["properties"]
    props["params"] = params_schema(graph, spec.params, shape.components, shape.model_names)
    props["budget"] = _budget_schema(shape.components["RequestBudget"], budget)
    if graph.input_key != "question":  # db and evidence are a SQL graph's
        props.update(db=_null(), evidence=_null())
    else:
        db = _db_schema(spec, shape.allow_request_db, shape.databases)
        if db is None:
            return []
        props["db"], required = db
        if required:
            _require(extra, "db")
            _require(request, "refinegraph")
    request["properties"]["refinegraph"] = extra
    # OpenAI's two names for the per-call cap: the server takes both only when equal, which
    # JSON Schema cannot say; the document asks for one (a stricter promise, never a broken one)
    both = ("max_tokens", "max_completion_tokens")
    request["not"] = {"required": list(both), "properties": {k: {"type": "integer"} for k in both}}
    bodies = _tool_variants(graph, request, takes_tools)
    if "approve" in graph.params.model_fields:
        bodies = [variant for body in bodies for variant in _approval_variants(spec.params, body)]
    return bodies


def _upstreams(config: Config, graph: GraphSpec) -> str:
    """The UPSTREAM of `graph:UPSTREAM` as a pattern: the config's model names (any id of the
    `[proxy]` server when it names one), a comma list only for a graph that takes `models`."""
    one = "[^,]+" if config.proxy.base_url else "(" + "|".join(re.escape(m) for m in sorted(config.models)) + ")"
    field = graph.params.model_fields.get("models")
    if field is None:
        return one
    most = next((m.max_length for m in field.metadata if getattr(m, "max_length", None) is not None), None)
    return f"{one}(,{one})" + ("*" if most is None else f"{{0,{most - 1}}}")


def model_requests(config: Config, pipelines: dict[str, Pipeline], shape: RequestShape
                   ) -> dict[str, dict[str, Any]]:
    """One request body per model a request can run, by model title: each pipeline by name,
    each graph's GRAPH:UPSTREAM forms (a SQL graph only where a request may name a database).
    Whole bodies in a oneOf, not if/then rules on one body: generators (schemathesis'
    coverage phase) walk each body's properties and stay linear in the number of models."""
    bodies: dict[str, dict[str, Any]] = {}
    for name, pipeline in sorted(pipelines.items()):
        spec = pipeline.spec
        if get_graph(spec.graph).tests_a_function:
            continue
        found = model_request(shape, {"type": "string", "const": name}, get_graph(spec.graph), spec, spec.budget,
                              shape.takes_tools(pipeline.config, set(pipeline.config.roles.values())))
        bodies.update((f"{name} ({i + 1})" if i else name, body) for i, body in enumerate(found))
    proxied_tools = shape.takes_tools(config, set(config.models))
    for graph in list_graphs():
        if graph.tests_a_function:
            continue
        model = {"type": "string", "pattern": f"^{re.escape(graph.name)}:{_upstreams(config, graph)}$"}
        found = model_request(shape, model, graph, PipelineSpec(graph=graph.name), config.proxy.budget,
                              proxied_tools)
        title = f"{graph.name}:UPSTREAM"
        bodies.update((f"{title} ({i + 1})" if i else title, body) for i, body in enumerate(found))
    return bodies
