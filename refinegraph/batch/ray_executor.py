"""The Ray executor: inputs become Ray Data blocks, a pool of actors runs them.

Each actor writes its own trace shard (shards/worker-*.sqlite, with its checkpoints
beside it) and calls the config's models over HTTP: the embedded model is started ONCE,
in the driver, and workers get an `openai` backend pointing at it. After the job (also
after a failed one) the shards merge into the target store. An interrupted run is
resumed in the shard that holds it, so a re-run batch pays no finished call again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refinegraph.batch.execute import run_input
from refinegraph.batch.inputs import BatchInput
from refinegraph.batch.outdir import BatchDir
from refinegraph.config import Config, ModelSpec
from refinegraph.trace.merge import MergeReport, merge_stores, run_ids
from refinegraph.trace.store import TraceStore

INSTALL_RAY = "pip install 'refinegraph[ray]'   (installs ray[data])"
EMBEDDED_MODEL_ID = "smollm2-135m-instruct"


class RayUnavailable(RuntimeError):
    """The ray executor was asked for but Ray is not installed."""


def shared_model_config(config: Config) -> Config:
    """The config workers use: each embedded (`local`) model becomes an `openai` backend
    on the driver's one llama.cpp server, started here; other models are unchanged."""
    models = dict(config.models)
    for name, spec in config.models.items():
        if spec.backend == "local":
            from refinegraph.models.local import ensure_server

            address, parallel = ensure_server(spec.n_parallel, spec.ctx_per_slot, spec.threads)
            models[name] = ModelSpec(backend="openai", base_url=f"{address}/v1", model=EMBEDDED_MODEL_ID,
                                     max_n=parallel, timeout_s=spec.timeout_s, count_tokens="tokenize",
                                     retry=spec.retry, price_input_per_mtok=spec.price_input_per_mtok,
                                     price_output_per_mtok=spec.price_output_per_mtok)
    return config.model_copy(update={"models": models})


def shard_paths(shards: Path) -> list[Path]:
    return sorted(p for p in shards.glob("worker-*.sqlite") if not p.name.endswith(".checkpoints.sqlite"))


def checkpoint_of(shard: Path) -> Path:
    return shard.with_name(shard.stem + ".checkpoints.sqlite")


def runs_by_shard(shards: Path) -> dict[str, str]:
    """run id -> the shard that holds it (from earlier attempts of this batch)."""
    found: dict[str, str] = {}
    for shard in shard_paths(shards):
        store = TraceStore(shard)
        try:
            for run_id in run_ids(store):
                found[run_id] = str(shard)
        finally:
            store.close()
    return found


class BatchWorker:
    """A Ray Data actor: runs one input at a time into its own shard (or resumes a run in
    the shard of an earlier attempt that holds it)."""

    def __init__(self, shards: str, graph: str, params: dict[str, Any], budget_tokens: int | None,
                 config_json: str):
        self.shards = Path(shards)
        self.graph, self.params, self.budget_tokens = graph, params, budget_tokens
        self.config = Config.model_validate_json(config_json)
        self.shard = self.shards / f"worker-{uuid.uuid4().hex[:12]}.sqlite"
        self.stores: dict[str, TraceStore] = {}
        self.loop = asyncio.new_event_loop()

    def _store(self, path: str) -> TraceStore:
        if path not in self.stores:
            self.stores[path] = TraceStore(path)
        return self.stores[path]

    def _holder(self, run_id: str) -> str:
        """The shard already holding `run_id` (its input was retried after a worker died), else ours."""
        for shard in shard_paths(self.shards):
            if shard == self.shard:
                continue
            try:
                with contextlib.closing(sqlite3.connect(f"file:{shard}?mode=ro", uri=True, timeout=30)) as db:
                    if db.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone():
                        return str(shard)
            except sqlite3.OperationalError:  # a shard whose worker has not written yet
                continue
        return str(self.shard)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        out = []
        for ident, text, run_id, shard in zip(batch["id"], batch["input"], batch["run_id"], batch["shard"]):
            path = str(shard) or self._holder(str(run_id))
            row = self.loop.run_until_complete(run_input(
                self.graph, str(ident), json.loads(str(text)), str(run_id), store=self._store(path),
                checkpoint_path=checkpoint_of(Path(path)), config=self.config, params=self.params,
                budget_tokens=self.budget_tokens))
            row["shard"] = Path(path).name
            out.append(json.dumps(row, ensure_ascii=False))
        return {"result": out}


def _worker_cpus(ray: Any, concurrency: int, worker_cpus: float | None) -> float:
    """CPUs reserved per actor: as asked, else an even share of the cluster (at most 1),
    so `concurrency` actors fit on a small cluster (they mostly wait on model servers)."""
    if worker_cpus is not None:
        return worker_cpus
    total = ray.cluster_resources().get("CPU", 1.0)
    return round(min(1.0, max(0.05, total / (concurrency + 1))), 3)


def run_ray(items: list[BatchInput], bdir: BatchDir, *, graph: str, concurrency: int, config: Config,
            params: dict[str, Any], budget_tokens: int | None, target: TraceStore,
            on_result: Callable[[dict[str, Any]], None], ray_address: str | None = None,
            worker_cpus: float | None = None) -> MergeReport:
    """Run `items` on Ray Data with an actor pool of `concurrency`; merge the shards into `target`."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"the ray executor needs Ray: {INSTALL_RAY}") from exc
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    bdir.shards.mkdir(parents=True, exist_ok=True)
    worker_config = shared_model_config(config)
    started = bdir.started()
    holder = runs_by_shard(bdir.shards) if items else {}
    rows = []
    for item in items:
        run_id = started.get(item.id)
        if run_id is None:
            run_id = uuid.uuid4().hex
            bdir.record_start(item.id, run_id)
        rows.append({"id": item.id, "input": json.dumps(item.input, ensure_ascii=False), "run_id": run_id,
                     "shard": holder.get(run_id, "")})
    try:
        if rows:
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            cpus = _worker_cpus(ray, concurrency, worker_cpus)
            ds = ds.map_batches(
                BatchWorker, batch_size=1, concurrency=concurrency, num_cpus=cpus,
                fn_constructor_kwargs={"shards": str(bdir.shards.resolve()), "graph": graph, "params": params,
                                       "budget_tokens": budget_tokens, "config_json": worker_config.model_dump_json()})
            for out in ds.iter_rows():
                row = json.loads(out["result"])
                bdir.record_result(row)
                on_result(row)
    finally:
        report = merge_stores(shard_paths(bdir.shards), target)
    return report
