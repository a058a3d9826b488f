"""Replaying a recorded run from its trace alone (no model is called), and comparing its
decisions with the original's."""

from __future__ import annotations

import uuid
from typing import Any

from refinegraph.budget import Budget
from refinegraph.cache import ReplayCache
from refinegraph.config import Config, ModelSpec
from refinegraph.context import ReplayMiss, RunContext
from refinegraph.events import DECISION_TYPES, RunStarted
from refinegraph.models import Model
from refinegraph.registry import get_graph
from refinegraph.runs.execute import RunResult, _conversation, _execute, _owner, _recorded, _tools
from refinegraph.runs.resume import executions, superseded
from refinegraph.runs.stores import shared_store
from refinegraph.trace.store import BaseTraceStore, TraceWriter
from refinegraph.version import __version__


class ReplayModel:
    """Stands in for a recorded model during replay: it is never asked (cache only)."""

    backend = "replay"
    supports_tools = True  # never asked: a replayed call with tools is served from the trace

    def __init__(self, name: str, supports_json_schema: bool = True):
        self.name = name
        self.supports_json_schema = supports_json_schema

    async def sample(self, messages, **kwargs):  # pragma: no cover - replay_only never reaches it
        raise ReplayMiss(f"model {self.name!r} has no recording for this call")

    async def aclose(self) -> None:
        return None


def _recorded_prices(models: dict[str, dict[str, Any]], roles: dict[str, str], base: Config | None = None) -> Config:
    """The recorded models' prices, so a replay reports (and decides on) the same cost; the
    rest (the [sql] limits a replayed SQL graph runs its statements under, ...) from `base`."""
    specs = {name: ModelSpec(price_input_per_mtok=entry.get("price_input_per_mtok"),
                             price_output_per_mtok=entry.get("price_output_per_mtok"))
             for name, entry in models.items()}
    return (base or Config()).model_copy(update={"models": specs or {"local": ModelSpec()}, "roles": roles})


class ReplayResult(RunResult):
    replay_of: str
    decisions_match: bool
    answer_matches: bool


def decisions(store: BaseTraceStore, run_id: str) -> list[dict[str, Any]]:
    """The run's decision events without run-specific fields, for comparing runs; those of
    node executions a resume ran again (superseded) are left out, their rerun's kept."""
    volatile = {"run_id", "seq", "ts", "elapsed_s", "elapsed_ms"}
    events = store.events(run_id)
    owner, dropped = executions(events), superseded(events)
    return [{k: v for k, v in event.items() if k not in volatile} for event in events
            if event["type"] in DECISION_TYPES and owner.get(event["seq"]) not in dropped]


async def replay(run_id: str, *, store: BaseTraceStore | None = None, config: Config | None = None) -> ReplayResult:
    """Re-run a recorded run from its trace alone: no model is called.

    The replay is itself a run (with `replay_of` set) whose decisions are compared with
    the original's. Its budget is the original's less wall time, which no replay
    reproduces: where the original was refused for time, the replay is refused alike. The
    models are the recorded ones; `config` gives the rest (a SQL run's [sql] limits).
    """
    store = store or shared_store(config)
    original = store.find_run(run_id)
    started = _recorded(store, original, "replay")
    roles = started["roles"]
    models: dict[str, Model] = {
        name: ReplayModel(name, started["models"].get(name, {}).get("supports_json_schema", True))
        for name in set(roles.values()) | set(started["models"])}
    limits = {f"max_{k}": v for k, v in started["budget"].items() if k != "seconds"}
    new_id = uuid.uuid4().hex
    key = get_graph(started["graph"]).input_key
    writer = TraceWriter(store, new_id, new=True)
    writer.create_run(started["graph"], str(started["input"].get(key, started["input"])), replay_of=original,
                      owner=_owner())
    ctx = RunContext(run_id=new_id, models=models, roles=roles, writer=writer,
                     budget=Budget(**limits), cache=ReplayCache.from_trace(store, original), replay_only=True,
                     config=_recorded_prices(started["models"], roles, config),
                     conversation=_conversation(store, started), tools=_tools(store, started))
    ctx.emit(RunStarted(graph=started["graph"], input=started["input"], params=started["params"],
                        roles=roles, models=started["models"], budget=started["budget"],
                        replay_of=original, version=__version__, conversation_blob=started.get("conversation_blob"),
                        tools_blob=started.get("tools_blob")))
    result = await _execute(ctx, started["graph"], started["input"], started["params"], checkpoint=False,
                            checkpoint_path=None)
    finished = store.events(original, types={"run_finished"})
    original_answer = finished[-1]["answer"] if finished else None
    return ReplayResult(**result.model_dump(), replay_of=original,
                        decisions_match=decisions(store, original) == decisions(store, new_id),
                        answer_matches=original_answer == result.answer)
