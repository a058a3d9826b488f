"""Running a registered graph on one input: start, resume, replay.

A run gets an id, a trace (run_started ... run_finished, hash-chained) and a RunContext
handed to every node. The trace is also what makes a run resumable: `resume` runs the graph
again from its recorded input, every model call that had finished served from the trace
(the replay cache), so nothing finished is paid twice and no checkpoint file is needed.
LangGraph's checkpointer is used only where LangGraph itself needs one: a graph that waits
on a human through `interrupt()` (pass `checkpoint=True`).

The jobs live apart (refinegraph.runs: start, resume, replay, what they share, the stores
and the checkpointer; refinegraph.compiled: the compiled-graph cache); this module is
where callers import them from.
"""

from refinegraph.compiled import RECURSION_LIMIT, clear_compiled_graphs, compiled_graph
from refinegraph.config import ConfigError
from refinegraph.runs.checkpoints import TraceFirstSaver, checkpoint_file, open_saver
from refinegraph.runs.execute import RunFailed, RunNotResumable, RunResult, TraceUnusable
from refinegraph.runs.replay import ReplayModel, ReplayResult, decisions, replay
from refinegraph.runs.resume import executions, resume, superseded
from refinegraph.runs.start import new_run_id, run
from refinegraph.runs.stores import close_shared_stores, default_store, shared_store

__all__ = ["RunResult", "RunFailed", "RunNotResumable", "TraceUnusable", "run", "resume", "replay",
           "decisions", "ConfigError", "compiled_graph", "clear_compiled_graphs", "RECURSION_LIMIT",
           "ReplayModel", "ReplayResult", "TraceFirstSaver", "checkpoint_file", "open_saver", "executions",
           "superseded", "new_run_id", "close_shared_stores", "default_store", "shared_store"]
