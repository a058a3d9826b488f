"""Embedding a refinegraph graph in a user's app: as a LangGraph subgraph, or as a LangChain Runnable.

Each invocation is a whole refinegraph run (`refinegraph.runner.run`): its own run id,
hash-chained trace (which makes it resumable), budget and replay, exactly as `refinegraph
run` makes.

Why a wrapper and not the bare compiled graph: refinegraph's nodes need a RunContext as
LangGraph's runtime context (models, budget, trace writer), and their state schema
(`task`, `samples`, ...) is not the user's. LangGraph 1.x adds a compiled graph directly as
a node only when it shares state keys with the parent and runs under the parent's
context; for a different schema its docs say to call the graph from a node and map the
keys. `as_subgraph` does that inside a small compiled graph whose input schema is the
parent's input key and whose output schema is the keys it writes back, so
`builder.add_node("refine", as_subgraph(...))` works in any parent state with those keys.

The inner run is started with LangChain's parent-config context variable cleared, so it
does not become part of the parent's Pregel run: it is traced under its own run id in
refinegraph's trace store (not the parent's checkpointer) and the parent sees one node.
Re-running the parent's node (e.g. resuming the parent after a crash) starts a new
refinegraph run; the earlier one stays in the trace store.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.graph import END, START, StateGraph

from refinegraph.budget import Budget
from refinegraph.config import Config, ConfigError
from refinegraph.models.base import Model
from refinegraph.registry import get_graph
from refinegraph.runner import RunResult, compiled_graph, run
from refinegraph.trace.store import TraceStore

RunFn = Callable[[str | dict[str, Any]], Awaitable[RunResult]]


def _fresh_budget(budget: Budget | None) -> Budget | None:
    """A Budget spends as it goes: every invocation gets the same limits, unspent."""
    if budget is None:
        return None
    return Budget(max_tokens=budget.max_tokens, max_calls=budget.max_calls, max_seconds=budget.max_seconds)


async def _isolated(coro: Awaitable[RunResult]) -> RunResult:
    """Await the run outside the caller's LangChain/LangGraph run (see the module doc)."""
    context = contextvars.copy_context()
    context.run(var_child_runnable_config.set, None)
    return await asyncio.create_task(coro, context=context)  # type: ignore[arg-type]


def _run_sync(make: Callable[[], Awaitable[RunResult]]) -> RunResult:
    """Run a coroutine to the end from sync code, also when this thread already has a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread, re-raised there
            box["error"] = exc

    worker = threading.Thread(target=target, name="refinegraph-run")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _runner(graph_name: str, *, params: dict[str, Any] | None, config: Config | None, budget: Budget | None,
            models: dict[str, Model] | None, store: TraceStore | None, checkpoint: bool) -> RunFn:
    """Check graph and params now (a bad name fails at wiring time), run later."""
    get_graph(graph_name)
    compiled_graph(graph_name, params or {})

    async def start(task: str | dict[str, Any]) -> RunResult:
        return await _isolated(run(graph_name, task, config=config, params=params, budget=_fresh_budget(budget),
                                   models=models, store=store, checkpoint=checkpoint))

    return start


def as_subgraph(graph_name: str, *, params: dict[str, Any] | None = None, config: Config | None = None,
                input_key: str | Mapping[str, str] = "question", output_key: str = "answer",
                run_id_key: str | None = "run_id", stop_reason_key: str | None = None,
                budget: Budget | None = None, models: dict[str, Model] | None = None,
                store: TraceStore | None = None, checkpoint: bool = False, name: str | None = None) -> Any:
    """A compiled LangGraph graph that runs `graph_name` as one refinegraph run per invocation.

    `input_key`: the parent's key holding the graph's input (its registered input key,
    e.g. "task"), or a mapping {parent_key: graph_input_key} for graphs with several
    inputs. The answer goes to `output_key`, the run id to `run_id_key` and the stop
    reason to `stop_reason_key` (None: not written). Works with `ainvoke` and `invoke`.
    A run that fails raises `RunFailed` (its trace is sealed and names the failure).
    """
    spec = get_graph(graph_name)
    mapping = dict(input_key) if isinstance(input_key, Mapping) else {input_key: spec.input_key}
    if spec.input_key not in mapping.values():
        raise ConfigError(f"graph {graph_name!r} reads {spec.input_key!r}: map a parent key to it")
    outputs = {k: v for k, v in (("answer", output_key), ("run_id", run_id_key),
                                 ("stop_reason", stop_reason_key)) if v}
    clash = set(mapping) & set(outputs.values())
    if clash:
        raise ConfigError(f"keys {sorted(clash)} are both read and written by the subgraph")
    start = _runner(graph_name, params=params, config=config, budget=budget, models=models, store=store,
                    checkpoint=checkpoint)

    def graph_input(state: Mapping[str, Any]) -> dict[str, Any]:
        missing = [k for k in mapping if state.get(k) in (None, "")]
        if missing:
            raise ConfigError(f"refinegraph subgraph {graph_name!r}: parent state has no value for {missing}")
        return {graph_key: state[parent_key] for parent_key, graph_key in mapping.items()}

    def update(result: RunResult) -> dict[str, Any]:
        values = {"answer": result.answer, "run_id": result.run_id, "stop_reason": result.stop_reason}
        return {key: values[field] for field, key in outputs.items()}

    async def arun(state: dict[str, Any]) -> dict[str, Any]:
        return update(await start(graph_input(state)))

    def srun(state: dict[str, Any]) -> dict[str, Any]:
        task = graph_input(state)
        return update(_run_sync(lambda: start(task)))

    input_schema = TypedDict("RefinegraphInput", {k: Any for k in mapping})  # type: ignore[misc]
    output_schema = TypedDict("RefinegraphOutput", {k: Any for k in outputs.values()})  # type: ignore[misc]
    state_schema = TypedDict("RefinegraphState", {**{k: Any for k in mapping},  # type: ignore[misc]
                                                  **{k: Any for k in outputs.values()}}, total=False)
    builder = StateGraph(state_schema, input_schema=input_schema, output_schema=output_schema)
    builder.add_node("run", RunnableLambda(srun, afunc=arun, name=f"refinegraph:{graph_name}"))
    builder.add_edge(START, "run")
    builder.add_edge("run", END)
    return builder.compile(name=name or f"refinegraph:{graph_name}")


# -- LangChain Runnable ------------------------------------------------------------------------


def task_from_messages(messages: Sequence[BaseMessage]) -> str:
    """The task a chat asks for: the human turn, with any system text before it.

    One human message (with system messages): their texts joined, system first. A longer
    conversation becomes a transcript ("System: ...", "User: ...", "Assistant: ...") whose
    last line is the question, so no turn is dropped silently.
    """
    if not messages:
        raise ConfigError("no messages: nothing to ask the graph")
    labels = {"system": "System", "human": "User", "ai": "Assistant"}
    turns = [m for m in messages if m.type != "system"]
    if len(turns) == 1 and turns[0].type == "human":
        return "\n\n".join(m.text for m in messages if m.text.strip())
    return "\n".join(f"{labels.get(m.type, m.type.title())}: {m.text}" for m in messages)


class RefinegraphRunnable(Runnable[Any, AIMessage]):
    """A refinegraph graph as a LangChain Runnable: input a str, a dict, messages or a
    PromptValue; output an AIMessage whose content is the answer.

    `response_metadata` holds run_id, graph, stop_reason, usage, model_calls, cache_hits,
    fallbacks and cost_usd; `usage_metadata` the run's tokens (LangChain's usual keys), so
    `prompt | runnable` and LangChain's usage callbacks see them. A budget stop gives an
    AIMessage with the best answer so far ("" when none) and stop_reason "budget"; a failed
    run raises RunFailed.
    """

    def __init__(self, graph_name: str, *, params: dict[str, Any] | None = None, config: Config | None = None,
                 budget: Budget | None = None, models: dict[str, Model] | None = None,
                 store: TraceStore | None = None, checkpoint: bool = False, name: str | None = None):
        self.graph_name = graph_name
        self.input_key = get_graph(graph_name).input_key
        self.name = name or f"refinegraph:{graph_name}"
        self._start = _runner(graph_name, params=params, config=config, budget=budget, models=models,
                              store=store, checkpoint=checkpoint)

    def graph_input(self, value: Any) -> str | dict[str, Any]:
        """What the graph is given for a Runnable input (see the class doc)."""
        if isinstance(value, str):
            return value
        if isinstance(value, PromptValue):
            return task_from_messages(value.to_messages())
        if isinstance(value, BaseMessage):
            return task_from_messages([value])
        if isinstance(value, Mapping):
            if self.input_key not in value:
                raise ConfigError(f"graph {self.graph_name!r} reads {self.input_key!r}; the input dict has "
                                  f"{sorted(value)}")
            return dict(value)
        if isinstance(value, Sequence):
            return task_from_messages(convert_to_messages(value))
        raise ConfigError(f"cannot give a {type(value).__name__} to graph {self.graph_name!r}: "
                          "pass a str, a dict, messages or a PromptValue")

    @staticmethod
    def message(result: RunResult) -> AIMessage:
        usage = result.usage
        return AIMessage(
            content=result.answer or "", id=f"refinegraph-{result.run_id}",
            response_metadata={"run_id": result.run_id, "graph": result.graph, "stop_reason": result.stop_reason,
                               "usage": dict(usage), "model_calls": result.model_calls,
                               "cache_hits": result.cache_hits, "fallbacks": dict(result.fallbacks),
                               "cost_usd": result.cost_usd, "model_name": f"refinegraph:{result.graph}"},
            usage_metadata={"input_tokens": usage.get("prompt_tokens", 0),
                            "output_tokens": usage.get("completion_tokens", 0),
                            "total_tokens": usage.get("total_tokens", 0),
                            "input_token_details": {"cache_read": usage.get("cached_prompt_tokens", 0)}},
        )

    async def _arun(self, value: Any) -> AIMessage:
        return self.message(await self._start(self.graph_input(value)))

    def _run(self, value: Any) -> AIMessage:
        task = self.graph_input(value)
        return self.message(_run_sync(lambda: self._start(task)))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        return await self._acall_with_config(self._arun, input, config, run_type="chain")

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        return self._call_with_config(self._run, input, config, run_type="chain")


def as_runnable(graph_name: str, *, params: dict[str, Any] | None = None, config: Config | None = None,
                budget: Budget | None = None, models: dict[str, Model] | None = None,
                store: TraceStore | None = None, checkpoint: bool = False) -> RefinegraphRunnable:
    """`graph_name` as a LangChain Runnable (invoke, ainvoke, batch, abatch, `prompt | runnable`).

    `budget` is the limit of each invocation (every one starts unspent).
    """
    return RefinegraphRunnable(graph_name, params=params, config=config, budget=budget, models=models,
                               store=store, checkpoint=checkpoint)


__all__ = ["as_subgraph", "as_runnable", "RefinegraphRunnable", "task_from_messages"]
