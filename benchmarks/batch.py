"""`refinegraph bench batch`: `refinegraph batch` vs a raw asyncio openai load, same requests.

On the embedded llama.cpp server: a batch of `runs` greedy runs (one model call each)
through the local executor at a concurrency, and the same requests sent by a bare
`openai.AsyncOpenAI` client with an asyncio semaphore of the same size. The raw load
sends exactly the requests the batch's trace recorded (messages and sampling params),
with only the per-round tag at the start of each task changed, so neither configuration
finds the other's prompts in the server's prefix cache. Completion tokens come from the
server's own counter (llamacpp:tokens_predicted_total), read around each configuration.
Rounds alternate which configuration goes first.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from refinegraph.batch import run_batch
from refinegraph.batch.outdir import read_jsonl
from refinegraph.bench.report import environment, md_table
from refinegraph.bench.sampling import parse_metrics
from refinegraph.config import Config
from refinegraph.models.local import ensure_server
from refinegraph.trace.store import TraceStore

MODEL_ID = "smollm2-135m-instruct"
GOAL = 0.90
ITEMS = ["apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells"]


def questions(count: int) -> list[str]:
    """Distinct small word problems (the model's answers do not matter, only its tokens)."""
    out = []
    for i in range(count):
        a, b, c = 3 + i % 17, 5 + (i * 7) % 23, 2 + (i * 3) % 5
        item = ITEMS[i % len(ITEMS)]
        out.append(f"Sam has {a} {item}. He buys {b} more and then gives {c} to a friend. "
                   f"How many {item} does Sam have now? Explain briefly.")
    return out


def tagged(tag: str, count: int) -> list[dict[str, str]]:
    return [{"id": str(i), "task": f"[{tag}-{i}] {q}"} for i, q in enumerate(questions(count))]


class BatchBench:
    def __init__(self, runs: int, concurrency: int, max_tokens: int, workdir: Path, *, address: str | None = None,
                 config: Config | None = None, model_id: str = MODEL_ID):
        self.runs, self.concurrency, self.max_tokens, self.workdir = runs, concurrency, max_tokens, workdir
        self.address = address or ensure_server(n_parallel=max(8, concurrency))[0]
        self.config, self.model_id = config or Config(), model_id
        self.client = openai.AsyncOpenAI(base_url=f"{self.address}/v1", api_key="not-needed", max_retries=0,
                                         timeout=600.0)
        self.http = httpx.AsyncClient(timeout=60.0)
        self.template: list[dict[str, Any]] | None = None
        self.template_tag: str | None = None

    async def predicted(self) -> float:
        response = await self.http.get(f"{self.address}/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)["predicted"]

    async def batch(self, tag: str) -> dict[str, Any]:
        """The local executor on tagged tasks; keeps the recorded requests for the raw load."""
        store = TraceStore(self.workdir / f"{tag}.sqlite")
        before, started = await self.predicted(), time.perf_counter()
        summary = await run_batch(tagged(tag, self.runs), graph="greedy", executor="local",
                                  concurrency=self.concurrency, config=self.config,
                                  params={"max_tokens": self.max_tokens}, out=self.workdir / f"{tag}-out",
                                  store=store, checkpoint_path=self.workdir / f"{tag}.checkpoints.sqlite")
        wall = time.perf_counter() - started
        tokens = await self.predicted() - before
        if self.template is None:
            self.template, self.template_tag = self._recorded(store), tag
        store.close()
        return {"configuration": "refinegraph batch (local executor)", "tag": tag, "wall_s": wall,
                "server_completion_tokens": tokens, "usage_completion_tokens": summary.completion_tokens,
                "requests": summary.calls, "errors": summary.errors}

    def _recorded(self, store: TraceStore) -> list[dict[str, Any]]:
        """Each run's one llm_call: its messages and sampling params, in input order."""
        rows = {r["id"]: r for r in read_jsonl(self.workdir / f"{store.path.stem}-out" / "results.jsonl")}
        requests = []
        for i in range(self.runs):
            call = store.events(rows[str(i)]["run_id"], types={"llm_call"})[0]
            params = {k: call["params"][k] for k in ("temperature", "max_tokens", "seed")}
            if call["params"].get("response_format") is not None:
                params["response_format"] = call["params"]["response_format"]
            requests.append({"messages": store.get_blob(call["request_blob"])["messages"], **params})
        return requests

    async def raw(self, tag: str) -> dict[str, Any]:
        """The recorded requests, retagged, from a bare openai client at the same concurrency."""
        assert self.template is not None and self.template_tag is not None
        gate = asyncio.Semaphore(self.concurrency)
        usage = {"completion": 0}

        async def one(i: int, request: dict[str, Any]) -> None:
            old, new = f"[{self.template_tag}-{i}]", f"[{tag}-{i}]"
            messages = [{**m, "content": m["content"].replace(old, new)} for m in request["messages"]]
            async with gate:
                response = await self.client.chat.completions.create(
                    model=self.model_id, messages=messages, n=1,
                    **{k: v for k, v in request.items() if k != "messages"})
            usage["completion"] += response.usage.completion_tokens if response.usage else 0

        before, started = await self.predicted(), time.perf_counter()
        await asyncio.gather(*(one(i, r) for i, r in enumerate(self.template)))
        wall = time.perf_counter() - started
        tokens = await self.predicted() - before
        return {"configuration": "raw asyncio openai client", "tag": tag, "wall_s": wall,
                "server_completion_tokens": tokens, "usage_completion_tokens": usage["completion"],
                "requests": len(self.template), "errors": 0}

    async def aclose(self) -> None:
        await self.client.close()
        await self.http.aclose()


def _totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    wall = sum(r["wall_s"] for r in rows)
    tokens = sum(r["server_completion_tokens"] for r in rows)
    return {"wall_s": round(wall, 3), "completion_tokens": tokens,
            "completion_tokens_per_s": round(tokens / wall, 2) if wall else 0.0}


async def batch_bench(runs: int = 32, concurrency: int = 8, max_tokens: int = 64, rounds: int = 2, *,
                      address: str | None = None, config: Config | None = None,
                      model_id: str = MODEL_ID) -> dict[str, Any]:
    """Measure both configurations over `rounds` interleaved rounds; the ratio is of totals.

    By default against the embedded server; `address` (a llama.cpp-style server with
    /metrics), `config` and `model_id` point it at another one (tests use a stub).
    """
    with tempfile.TemporaryDirectory(prefix="rg-bench-batch-") as folder:
        bench = BatchBench(runs, concurrency, max_tokens, Path(folder), address=address, config=config,
                           model_id=model_id)
        measured: list[dict[str, Any]] = []
        try:
            await bench.batch("warmup")  # records the requests, warms the server's shared system prompt
            for r in range(rounds):
                order = ("batch", "raw") if r % 2 == 0 else ("raw", "batch")
                for key in order:
                    row = await getattr(bench, key)(f"r{r}{key[0]}")
                    row["round"] = r
                    measured.append(row)
        finally:
            await bench.aclose()
    batch_rows = [m for m in measured if m["configuration"].startswith("refinegraph")]
    raw_rows = [m for m in measured if not m["configuration"].startswith("refinegraph")]
    batch, raw = _totals(batch_rows), _totals(raw_rows)
    ratio = batch["completion_tokens_per_s"] / raw["completion_tokens_per_s"] if raw["completion_tokens_per_s"] else 0
    return {"benchmark": "batch", "runs": runs, "concurrency": concurrency, "max_tokens": max_tokens,
            "rounds": rounds, "graph": "greedy", "model": model_id, "measurements": measured,
            "refinegraph_batch": batch, "raw_openai": raw, "ratio": round(ratio, 3), "goal": GOAL,
            "meets_goal": ratio >= GOAL, "environment": environment(("refinegraph", "langgraph", "openai"))}


def ratio_lines(report: dict[str, Any]) -> list[str]:
    verdict = "meets" if report["meets_goal"] else "MISSES"
    return [f"refinegraph batch: {report['refinegraph_batch']['completion_tokens_per_s']:.1f} completion tok/s; "
            f"raw openai: {report['raw_openai']['completion_tokens_per_s']:.1f} tok/s; "
            f"ratio {report['ratio']:.3f} ({verdict} the goal >= {report['goal']:.2f})"]


def markdown(report: dict[str, Any]) -> str:
    rows = [[m["round"], m["configuration"], f"{m['wall_s']:.2f}", f"{m['server_completion_tokens']:.0f}",
             f"{m['server_completion_tokens'] / m['wall_s']:.1f}" if m["wall_s"] else "-", m["requests"], m["errors"]]
            for m in report["measurements"]]
    totals = [[name, f"{t['wall_s']:.2f}", f"{t['completion_tokens']:.0f}", f"{t['completion_tokens_per_s']:.1f}"]
              for name, t in (("refinegraph batch (local executor)", report["refinegraph_batch"]),
                              ("raw asyncio openai client", report["raw_openai"]))]
    return "\n\n".join([
        f"# refinegraph batch vs raw openai load\n\n{report['runs']} greedy runs per configuration and round, "
        f"concurrency {report['concurrency']}, max_tokens {report['max_tokens']}, {report['rounds']} rounds, "
        f"embedded {report['model']} (llama.cpp). Completion tokens from the server's counter.",
        md_table(["round", "configuration", "wall s", "completion tok", "tok/s", "requests", "errors"], rows),
        md_table(["configuration", "wall s", "completion tok", "tok/s"], totals),
        "\n".join(ratio_lines(report))])
