"""`refinegraph bench vllm`: vLLM's engine in-process and vLLM's server, with llama.cpp beside.

One model folder (Hugging Face format; on a CPU machine the embedded SmolLM2 converted by
scripts/vllm-cpu-env.sh), one task, n samples in one request at temperature 0.8, through
refinegraph's backends:

- `vllm` (the engine in this process): load time (engine start to ready), completion
  tokens/s, memory (resident set of this process and the engine's child processes);
- vLLM's server through the `openai` backend: load time (process start to /health),
  tokens/s, memory of the server's process tree;
- the embedded llama.cpp server (`local`), when installed: the same figures, for scale
  (it runs the 4-bit GGUF, vLLM the de-quantized weights).

Repeats are interleaved per backend's turn and use their own seeds; the prefix cache's
hit is read from a second request that shares a long system prompt with the first.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from refinegraph.bench.report import environment, md_table, median
from refinegraph.models.base import Model, Samples
from refinegraph.procs import process_tree_rss

TASK = ("A train leaves at 09:40 and arrives at 13:05, stopping twice for 7 minutes each. How long was it "
        "moving? Work it out step by step.")
SYSTEM = " ".join(["You are a careful assistant. Check every step of your arithmetic before you answer."] * 24)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    return process_tree_rss(pid) / 2**20


async def _measure(model: Model, *, n: int, max_tokens: int, repeats: int, pid: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": TASK}]
    rounds = []
    for repeat in range(repeats):
        started = time.perf_counter()
        samples: Samples = await model.sample(messages, n=n, temperature=0.8, max_tokens=max_tokens, seed=100 + repeat)
        wall = time.perf_counter() - started
        rounds.append({"wall_s": round(wall, 3), "completion_tokens": samples.usage.completion_tokens,
                       "tokens_per_s": round(samples.usage.completion_tokens / wall, 1),
                       "requests": samples.requests, "choices": len(samples.texts)})
    shared = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]
    await model.sample(shared, max_tokens=8)
    cached = await model.sample(shared, max_tokens=8)
    return {"rounds": rounds, "tokens_per_s": median([r["tokens_per_s"] for r in rounds]),
            "wall_s": median([r["wall_s"] for r in rounds]), "rss_mb": round(tree_rss_mb(pid), 1),
            "prefix_prompt_tokens": cached.usage.prompt_tokens,
            "prefix_cached_tokens": cached.usage.cached_prompt_tokens}


async def vllm_bench(model_dir: str, workdir: Path, *, n: int = 8, max_tokens: int = 64, repeats: int = 3,
                     engine_args: dict[str, Any] | None = None, server_args: tuple[str, ...] = (),
                     backends: tuple[str, ...] = ("local", "vllm", "vllm-server")) -> dict[str, Any]:
    """Each backend started, measured and stopped in turn (so memory figures are its own)."""
    import os

    from refinegraph.models import ModelUnavailable, OpenAIModel, VLLMEngineModel
    from refinegraph.models.local import LocalModel
    from refinegraph.models.vllm_backend import INSTALL
    from refinegraph.models.vllm_server import vllm_server

    pid = os.getpid()
    results: dict[str, Any] = {}
    base_rss = tree_rss_mb(pid)
    if "local" in backends:
        # One thread: on a small shared machine llama.cpp's spinning threads slow it several-fold.
        local = LocalModel("local", threads=1)
        started = time.perf_counter()
        try:
            _ = local.address
            load = time.perf_counter() - started
            results["local"] = {"label": "llama.cpp embedded (local, GGUF Q4_1)", "load_s": round(load, 1),
                                **await _measure(local, n=n, max_tokens=max_tokens, repeats=repeats, pid=pid)}
            results["local"]["rss_mb"] = round(results["local"]["rss_mb"] - base_rss, 1)
        except ModelUnavailable as exc:
            results["local"] = {"label": "llama.cpp embedded", "skipped": str(exc)}
        finally:
            await local.aclose()
    if "vllm" in backends:
        engine = VLLMEngineModel("vllm", model=model_dir, engine_args=engine_args)
        before = tree_rss_mb(pid)
        try:
            await engine.start()
            results["vllm"] = {"label": "vLLM engine in-process (vllm backend)",
                               "load_s": round(engine.load_seconds or 0.0, 1),
                               **await _measure(engine, n=n, max_tokens=max_tokens, repeats=repeats, pid=pid)}
            results["vllm"]["rss_mb"] = round(results["vllm"]["rss_mb"] - before, 1)
        except ModelUnavailable as exc:
            results["vllm"] = {"label": "vLLM engine in-process", "skipped": str(exc)}
        finally:
            await engine.aclose()
    if "vllm-server" in backends and importlib.util.find_spec("vllm") is None:
        results["vllm-server"] = {"label": "vLLM server", "skipped": INSTALL}  # it would exit at its first import
    elif "vllm-server" in backends:
        with vllm_server(model_dir, workdir / "vllm-server.log", served_name="bench", args=server_args) as server:
            client = OpenAIModel("vllm-server", base_url=server.base_url, model=server.served_name)
            try:
                results["vllm-server"] = {"label": "vLLM server (openai backend)",
                                          "load_s": round(server.load_seconds, 1),
                                          **await _measure(client, n=n, max_tokens=max_tokens, repeats=repeats,
                                                           pid=server.process.pid)}
            finally:
                await client.aclose()
    return {"model_dir": model_dir, "n": n, "max_tokens": max_tokens, "repeats": repeats,
            "engine_args": engine_args or {}, "server_args": list(server_args), "backends": results,
            "environment": environment(("refinegraph", "vllm", "vllm-cpu", "torch", "xllamacpp"))}


def rows(report: dict[str, Any]) -> list[list[Any]]:
    out = []
    for result in report["backends"].values():
        if "skipped" in result:
            out.append([result["label"], "skipped", "", "", "", ""])
            continue
        out.append([result["label"], result["load_s"], result["wall_s"], result["tokens_per_s"],
                    round(result["rss_mb"]), f"{result['prefix_cached_tokens']}/{result['prefix_prompt_tokens']}"])
    return out


HEADER = ["backend", "load s", "wall s (n in one request)", "completion tok/s", "memory MiB",
          "prefix cache hit (cached/prompt tokens)"]


def markdown(report: dict[str, Any]) -> str:
    header = [h.replace("n in one request", f"n={report['n']} in one request") for h in HEADER]
    return (f"# bench vllm\n\n{report['model_dir']}, n={report['n']}, max_tokens={report['max_tokens']}, "
            f"median of {report['repeats']} repeats\n\n" + md_table(header, rows(report)) + "\n")
