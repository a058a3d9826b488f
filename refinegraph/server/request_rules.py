"""What a chat request may send for each model the server answers, as JSON Schema.

The server checks a request against the pipeline (or `GRAPH:UPSTREAM` form) it names: the
graph's own params model, the pipeline's budget as the ceiling, `db` and `evidence` for SQL
graphs only, tools for graphs that take them, approval that a stream cannot carry. Each of
those checks is one `if model is X then ...` rule of the OpenAPI document, made here from
the same specs the checks read, so that a body the document allows is a body the server
takes (schemathesis' positive_data_acceptance), and one it forbids is refused.

A params model whose fields constrain each other (SETS' step limit, step search's beam
width) states that in a classmethod `schema_rules(defaults) -> list[schema]` beside its
validator; `defaults` are the values in force when a request leaves a field out.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from refinegraph.config import BudgetSpec, Config, PipelineSpec
from refinegraph.registry import GraphSpec, get_graph, list_graphs

REF = "#/components/schemas/{model}"
NULL = {"type": "null"}


def params_schema(graph: GraphSpec, fixed: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """The params a request may send: the graph's params model, with the pipeline's own params
    as the defaults its cross-field rules assume (nested models go to `components`)."""
    schema = graph.params_json_schema(fixed, ref_template=REF)
    components.update(schema.pop("$defs", {}))
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


def _sql_fields(spec: PipelineSpec, allow_request_db: bool, databases: dict[str, str]) -> dict[str, Any] | None:
    """db for a SQL graph: absent when the pipeline fixes it, else one of the server's names;
    None when no request can give this pipeline a database (it answers 400 to every one)."""
    if spec.db is not None:
        return {"properties": {"db": NULL}}
    if allow_request_db and databases:
        return {"required": ["db"], "properties": {"db": {"type": "string", "enum": sorted(databases)}}}
    return None


def _require(schema: dict[str, Any], *keys: str) -> None:
    schema["required"] = list(dict.fromkeys([*schema.get("required", []), *keys]))


NO_TOOLS = {"tools": NULL, "tool_choice": NULL, "parallel_tool_calls": NULL}


def _tool_variants(graph: GraphSpec, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The body without tools, and for a graph that takes them, the body with them (its
    params then fixed as the graph answers with tool calls, e.g. answer = tool_call)."""
    without = copy.deepcopy(request)
    without["properties"].update(NO_TOOLS)
    if graph.tool_params is None:
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


def model_request(shape: RequestShape, model: dict[str, Any], graph: GraphSpec, spec: PipelineSpec,
                  budget: BudgetSpec) -> list[dict[str, Any]]:
    """The request bodies for one model (a pipeline, or a graph's GRAPH:UPSTREAM forms), one
    per case a conditional would otherwise split (with or without tools, waiting for
    approval or not), each excluding the others; none when no request can run it."""
    request = copy.deepcopy(shape.request)
    request["properties"]["model"] = model
    extra = copy.deepcopy(shape.components["RefinegraphExtra"])
    props = extra["properties"]
    props["params"] = params_schema(graph, spec.params, shape.components)
    props["budget"] = _budget_schema(shape.components["RequestBudget"], budget)
    if graph.input_key != "question":  # db and evidence are a SQL graph's
        props.update(db=NULL, evidence=NULL)
    else:
        sql = _sql_fields(spec, shape.allow_request_db, shape.databases)
        if sql is None:
            return []
        props["db"] = sql["properties"]["db"]
        if "required" in sql:
            _require(extra, *sql["required"])
            _require(request, "refinegraph")
    request["properties"]["refinegraph"] = extra
    bodies = _tool_variants(graph, request)
    if "approve" in graph.params.model_fields:
        bodies = [variant for body in bodies for variant in _approval_variants(spec.params, body)]
    return bodies


def model_requests(config: Config, pipelines: dict[str, PipelineSpec], shape: RequestShape
                   ) -> dict[str, dict[str, Any]]:
    """One request body per model a request can run, by model title: each pipeline by name,
    each graph's GRAPH:UPSTREAM forms (a SQL graph only where a request may name a database).
    Whole bodies in a oneOf, not if/then rules on one body: generators (schemathesis'
    coverage phase) walk each body's properties and stay linear in the number of models."""
    bodies: dict[str, dict[str, Any]] = {}
    for name, spec in sorted(pipelines.items()):
        found = model_request(shape, {"type": "string", "const": name}, get_graph(spec.graph), spec, spec.budget)
        bodies.update((f"{name} ({i + 1})" if i else name, body) for i, body in enumerate(found))
    for graph in list_graphs():
        found = model_request(shape, {"type": "string", "pattern": f"^{graph.name}:.+$"}, graph,
                              PipelineSpec(graph=graph.name), config.proxy.budget)
        title = f"{graph.name}:UPSTREAM"
        bodies.update((f"{title} ({i + 1})" if i else title, body) for i, body in enumerate(found))
    return bodies
