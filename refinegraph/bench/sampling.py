"""`refinegraph bench sampling`: n samples in one request vs n requests vs refinegraph.

Against the embedded llama.cpp server, one fixed ~150-token task at temperature 0.8:
(a) n samples in one request through the openai SDK, (b) n concurrent requests of one
sample each, (c) the same n samples through a RunContext's `sample(...)` (the choke
point every node uses). The server's Prometheus counters, read around each
configuration, say how many prompt tokens it really processed and how many it took
from its per-slot prompt cache. Configurations are interleaved per repeat (the order
rotates) and each repeat uses its own seeds.

Per model it also reports prefill and decode speed (tokens/s, from llama.cpp's own
`timings` of single requests on a fresh prompt) and the process's peak resident memory
beside the model file's size. `compare` runs each model in its own process, so each
peak is that model's alone, and puts them side by side.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai

from refinegraph.bench.report import environment, md_table, median
from refinegraph.config import Config
from refinegraph.context import RunContext
from refinegraph.models.local import LocalModel, ServerSettings, ensure_server, resolve_model
from refinegraph.models.packaged import model_file, packaged_model
from refinegraph.prompts import load_prompt
from refinegraph.trace.store import TraceStore, TraceWriter

TEMPERATURE = 0.8
TASK = (
    "A small bakery sells three kinds of bread. Sourdough costs 4.50 euros a loaf, rye costs 3.20 "
    "euros and the seeded wholemeal costs 3.80 euros. On Monday the bakery sold 42 sourdough loaves, "
    "35 rye loaves and 27 wholemeal loaves. Flour and other ingredients cost 1.10 euros for a "
    "sourdough loaf, 0.90 euros for a rye loaf and 1.05 euros for a wholemeal loaf, and the bakery "
    "pays 160 euros a day for rent, power and wages together. The owner wants to know three things: "
    "the revenue on Monday, the profit on Monday after all costs, and which bread earned the most "
    "money per loaf after ingredients. Work it out step by step, show each calculation on its own "
    "line, and finish with one short sentence that states the three answers."
)
METRICS = {"prompt": "llamacpp:prompt_tokens_total", "cached": "llamacpp:prompt_tokens_cached_total",
           "predicted": "llamacpp:tokens_predicted_total"}
LABELS = {"one_request": "openai SDK, n={n} in one request",
          "separate": "openai SDK, {n} concurrent requests of n=1",
          "refinegraph": "refinegraph RunContext.sample(n={n})"}


def parse_metrics(text: str) -> dict[str, float]:
    """The counters this benchmark reads, from Prometheus text (a missing one is an error)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name.strip()] = float(value)
    missing = [m for m in METRICS.values() if m not in values]
    if missing:
        raise RuntimeError(f"the server's /metrics lacks {', '.join(missing)}")
    return {key: values[name] for key, name in METRICS.items()}


def messages_for(tag: str | None) -> list[dict[str, Any]]:
    """The solver's prompt on TASK; a tag at the very start defeats the server's prefix cache."""
    messages = load_prompt("solver").render(task=TASK)
    if tag:
        messages[0] = {**messages[0], "content": f"[request {tag}] {messages[0]['content']}"}
    return messages


Outcome = dict[str, Any]


class Bench:
    """The server, a direct openai client, and refinegraph's model, side by side."""

    def __init__(self, n: int, max_tokens: int, workdir: Path, model: str | None = None):
        self.n, self.max_tokens = n, max_tokens
        self.local = LocalModel("local", model=model, n_parallel=max(8, n), timeout=600.0)
        self.model_name = self.local.model
        address, _ = ensure_server(model=self.model_name, settings=ServerSettings(**self.local.settings))
        self.address = address
        self.client = openai.AsyncOpenAI(base_url=f"{address}/v1", api_key="not-needed", max_retries=0,
                                         timeout=600.0)
        self.http = httpx.AsyncClient(timeout=600.0)
        self.store = TraceStore(workdir / "traces.sqlite")

    async def speed(self, tag: str) -> dict[str, float]:
        """Prefill and decode tokens/s of one greedy request on a fresh prompt (llama.cpp's timings)."""
        response = await self.http.post(f"{self.address}/v1/chat/completions", json={
            "messages": messages_for(tag), "max_tokens": self.max_tokens, "temperature": 0.0})
        response.raise_for_status()
        timings = response.json()["timings"]
        return {"prompt_tokens": timings["prompt_n"], "prefill_tok_s": timings["prompt_per_second"],
                "completion_tokens": timings["predicted_n"], "decode_tok_s": timings["predicted_per_second"]}

    async def metrics(self) -> dict[str, float]:
        response = await self.http.get(f"{self.address}/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    async def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """The prompt's size in tokens, chat template included (one token generated)."""
        response = await self.client.chat.completions.create(
            model=self.model_name, messages=messages, max_tokens=1, temperature=0.0)
        return response.usage.prompt_tokens if response.usage else 0

    async def _create(self, messages: list[dict[str, Any]], n: int, seed: int) -> Any:
        return await self.client.chat.completions.create(
            model=self.model_name, messages=messages, n=n, temperature=TEMPERATURE,
            max_tokens=self.max_tokens, seed=seed)

    async def one_request(self, messages: list[dict[str, Any]], seed: int) -> Outcome:
        response = await self._create(messages, self.n, seed)
        return _outcome([c.message.content or "" for c in response.choices], [response], requests=1)

    async def separate(self, messages: list[dict[str, Any]], seed: int) -> Outcome:
        responses = await asyncio.gather(*[self._create(messages, 1, seed + i) for i in range(self.n)])
        return _outcome([r.choices[0].message.content or "" for r in responses], responses,
                        requests=self.n)

    async def refinegraph(self, messages: list[dict[str, Any]], seed: int) -> Outcome:
        run_id = uuid.uuid4().hex
        self.store.create_run(run_id, "bench-sampling", TASK)
        ctx = RunContext(run_id=run_id, models={"local": self.local}, roles={"default": "local"},
                         writer=TraceWriter(self.store, run_id), config=Config())
        samples = await ctx.sample("solver", messages, n=self.n, temperature=TEMPERATURE,
                                   max_tokens=self.max_tokens, seed=seed)
        return {"texts": samples.texts, "usage_prompt": samples.usage.prompt_tokens,
                "usage_cached": samples.usage.cached_prompt_tokens,
                "client_completion_tokens": samples.usage.completion_tokens,
                "requests": samples.requests, "tokenize_requests": self.n if samples.requests == 1 else None}

    async def measure(self, key: str, messages: list[dict[str, Any]], seed: int) -> Outcome:
        """One configuration once: wall time, its outcome and the server counters' deltas."""
        call: Callable[[list[dict[str, Any]], int], Awaitable[Outcome]] = getattr(self, key)
        before = await self.metrics()
        started = time.perf_counter()
        outcome = await call(messages, seed)
        wall = time.perf_counter() - started
        after = await self.metrics()
        delta = {k: after[k] - before[k] for k in METRICS}
        return {**outcome, "wall_s": wall, "server_prompt_tokens": delta["prompt"],
                "server_cached_tokens": delta["cached"], "server_predicted_tokens": delta["predicted"]}

    async def aclose(self) -> None:
        await self.client.close()
        await self.http.aclose()
        await self.local.aclose()
        self.store.close()


def _outcome(texts: list[str], responses: list[Any], requests: int) -> Outcome:
    usages = [r.usage for r in responses if r.usage is not None]
    cached = sum((getattr(u.prompt_tokens_details, "cached_tokens", 0) or 0) if u.prompt_tokens_details else 0
                 for u in usages)
    return {"texts": texts, "usage_prompt": sum(u.prompt_tokens for u in usages), "usage_cached": cached,
            "client_completion_tokens": sum(u.completion_tokens for u in usages), "requests": requests}


def summarize(n: int, max_tokens: int, repeats: int, fresh_prompt: bool, prompt_tokens: int,
              runs: dict[str, list[Outcome]], model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Medians over repeats of each configuration, the ratios, and every repeat's figures."""
    configs = []
    for key, outcomes in runs.items():
        wall = median([o["wall_s"] for o in outcomes])
        predicted = median([o["server_predicted_tokens"] for o in outcomes])
        configs.append({
            "key": key, "label": LABELS[key].format(n=n), "wall_s": round(wall, 3),
            "completion_tokens": predicted,
            "completion_tokens_per_s": round(median([o["server_predicted_tokens"] / o["wall_s"]
                                                     for o in outcomes]), 2),
            "prompt_tokens_processed": median([o["server_prompt_tokens"] for o in outcomes]),
            "prompt_tokens_cached": median([o["server_cached_tokens"] for o in outcomes]),
            "http_requests": _requests_label(outcomes[0]),
            "distinct_texts": median([len(set(o["texts"])) for o in outcomes]),
            "repeats": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in o.items() if k != "texts"}
                        for o in outcomes],
        })
    by_key = {c["key"]: c for c in configs}
    one = by_key["one_request"]
    return {
        "benchmark": "sampling",
        "server": f"embedded llama.cpp (xllamacpp), {(model or {}).get('title', 'SmolLM2-135M-Instruct (Q4_1)')}",
        "model": model or {},
        "n": n, "max_tokens": max_tokens, "repeats": repeats, "temperature": TEMPERATURE,
        "fresh_prompt": fresh_prompt, "prompt_tokens": prompt_tokens, "task": TASK,
        "notes": {
            "completion_tokens": "delta of the server counter llamacpp:tokens_predicted_total",
            "prompt_tokens_processed": "delta of llamacpp:prompt_tokens_total (excludes cached tokens)",
            "prompt_tokens_cached": "delta of llamacpp:prompt_tokens_cached_total",
            "client_completion_tokens": "what the client learns: usage.completion_tokens summed over responses "
                                        "(llama.cpp reports one choice when n>1); refinegraph: its per-choice count",
        },
        "configurations": configs,
        "ratios": {
            "separate_over_one_request_wall": round(by_key["separate"]["wall_s"] / one["wall_s"], 3),
            "refinegraph_over_one_request_wall": round(by_key["refinegraph"]["wall_s"] / one["wall_s"], 3),
            "separate_over_one_request_prompt_tokens": _ratio(by_key["separate"]["prompt_tokens_processed"],
                                                              one["prompt_tokens_processed"]),
        },
        "environment": environment(("refinegraph", "xllamacpp", "openai")),
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _requests_label(outcome: Outcome) -> str:
    extra = outcome.get("tokenize_requests")
    return f"{outcome['requests']}" + (f" (+{extra} /tokenize)" if extra else "")


def ratio_lines(report: dict[str, Any]) -> list[str]:
    """The ratio lines printed under the table."""
    r, n = report["ratios"], report["n"]
    prompt = r["separate_over_one_request_prompt_tokens"]
    return [
        f"separate requests / one request = {r['separate_over_one_request_wall']:.2f}x wall time"
        + (f", {prompt:.2f}x prompt tokens processed" if prompt is not None else ""),
        f"refinegraph / one request = {r['refinegraph_over_one_request_wall']:.2f}x wall time "
        f"(refinegraph sends n={n} in one request and counts each choice's tokens with /tokenize)",
    ]


def markdown(report: dict[str, Any]) -> str:
    """report.md: the printed table and lines, with the machine they were measured on."""
    n = report["n"]
    rows = [[c["label"], f"{c['wall_s']:.2f}", f"{c['completion_tokens']:.0f}",
             f"{c['completion_tokens_per_s']:.1f}", f"{c['prompt_tokens_processed']:.0f}",
             f"{c['prompt_tokens_cached']:.0f}", c["http_requests"], f"{c['distinct_texts']:.0f}/{n}"]
            for c in report["configurations"]]
    env = report["environment"]
    return "\n\n".join([
        "# refinegraph bench sampling",
        (f"{report['server']}; n={n}, max_tokens={report['max_tokens']}, "
         f"temperature {report['temperature']}, prompt {report['prompt_tokens']} tokens; median of "
         f"{report['repeats']} interleaved repeats. Prompt tokens processed/cached and completion tokens "
         "are the deltas of the server's own counters around each configuration. "
         + ("Each configuration's prompt starts with a unique tag, so none reuses another's cached prompt."
            if report["fresh_prompt"] else "The same prompt every time: the server's per-slot cache is at work.")),
        md_table(["configuration", "wall s", "completion tok", "completion tok/s", "prompt tok processed",
                  "prompt tok cached", "requests", "distinct texts"], rows),
        "\n".join(f"- {line}" for line in ratio_lines(report)),
        (f"Python {env['python']}, {env['platform']}, {env['cpus']} CPUs, "
         f"xllamacpp {env['versions'].get('xllamacpp')}, openai {env['versions'].get('openai')}, at {env['at']}."),
    ])


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def model_facts(model: str | None) -> dict[str, Any]:
    """The model's name, title and file size (the footprint's baseline)."""
    key, title = resolve_model(model)
    size = model_file(packaged_model(key)).stat().st_size
    return {"name": key, "title": title, "file_mb": round(size / (1 << 20), 1)}


async def sampling(n: int = 8, max_tokens: int = 64, repeats: int = 3, fresh_prompt: bool = True,
                   model: str | None = None) -> dict[str, Any]:
    """Run the benchmark (starting the embedded server if needed) and return its report."""
    with tempfile.TemporaryDirectory(prefix="refinegraph-bench-") as tmp:
        bench = Bench(n, max_tokens, Path(tmp), model=model)
        try:
            await bench._create(messages_for("warm-up"), bench.n, 0)  # first decode, every slot used once
            speeds = [await bench.speed(f"speed-{i}-{uuid.uuid4().hex[:8]}") for i in range(2)]
            prompt_tokens = await bench.prompt_tokens(messages_for(f"0-size-{uuid.uuid4().hex[:8]}"
                                                                   if fresh_prompt else None))
            keys = list(LABELS)
            runs: dict[str, list[Outcome]] = {k: [] for k in keys}
            for r in range(repeats):
                for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                    tag = f"{r}-{key}-{uuid.uuid4().hex[:8]}" if fresh_prompt else None
                    runs[key].append(await bench.measure(key, messages_for(tag), seed=1000 * (r + 1)))
            facts = model_facts(bench.model_name)
            report = summarize(n, max_tokens, repeats, fresh_prompt, prompt_tokens, runs, facts)
            peak = peak_rss_mb()
            report["speed"] = {"prefill_tok_s": round(median([s["prefill_tok_s"] for s in speeds]), 1),
                               "decode_tok_s": round(median([s["decode_tok_s"] for s in speeds]), 1),
                               "prompt_tokens": speeds[0]["prompt_tokens"], "requests": speeds,
                               "how": "llama.cpp's timings of one greedy n=1 request on a fresh prompt, median of 2"}
            report["memory"] = {"peak_rss_mb": peak, "file_mb": facts["file_mb"],
                                "beyond_file_mb": round(peak - facts["file_mb"], 1),
                                "server": bench.local.settings}
            return report
        finally:
            await bench.aclose()


def compare(models: list[str], n: int, max_tokens: int, repeats: int, fresh_prompt: bool = True,
            timeout_s: float = 3600.0) -> dict[str, Any]:
    """Each model's benchmark in its own process (so each peak is its own), side by side."""
    reports = []
    for model in models:
        cmd = [sys.executable, "-m", "refinegraph.bench.sampling", "--model", model, "--n", str(n),
               "--max-tokens", str(max_tokens), "--repeats", str(repeats)] + ([] if fresh_prompt else ["--same"])
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"bench sampling on {model} failed ({done.returncode}): {done.stderr[-2000:]}")
        reports.append(json.loads(done.stdout))
    return {"benchmark": "sampling-compare", "n": n, "max_tokens": max_tokens, "repeats": repeats,
            "models": [side_by_side_row(r) for r in reports], "reports": reports}


def side_by_side_row(report: dict[str, Any]) -> dict[str, Any]:
    """One model's line of the comparison."""
    by_key = {c["key"]: c for c in report["configurations"]}
    return {"model": report["model"]["name"], "title": report["model"]["title"],
            "file_mb": report["memory"]["file_mb"], "peak_rss_mb": report["memory"]["peak_rss_mb"],
            "beyond_file_mb": report["memory"]["beyond_file_mb"],
            "prefill_tok_s": report["speed"]["prefill_tok_s"], "decode_tok_s": report["speed"]["decode_tok_s"],
            "one_request_wall_s": by_key["one_request"]["wall_s"],
            "refinegraph_wall_s": by_key["refinegraph"]["wall_s"],
            "n_completion_tok_s": by_key["one_request"]["completion_tokens_per_s"]}


COMPARE_HEADER = ["model", "file MB", "peak RSS MB", "beyond file MB", "prefill tok/s", "decode tok/s",
                  "n in one request: s", "refinegraph: s", "n-sample tok/s"]


def compare_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[m["model"], f"{m['file_mb']:.0f}", f"{m['peak_rss_mb']:.0f}", f"{m['beyond_file_mb']:.0f}",
             f"{m['prefill_tok_s']:.1f}", f"{m['decode_tok_s']:.1f}", f"{m['one_request_wall_s']:.2f}",
             f"{m['refinegraph_wall_s']:.2f}", f"{m['n_completion_tok_s']:.1f}"] for m in report["models"]]


def compare_markdown(report: dict[str, Any]) -> str:
    return "\n\n".join([
        "# refinegraph bench sampling: models side by side",
        (f"n={report['n']}, max_tokens={report['max_tokens']}, median of {report['repeats']} repeats; each "
         "model in its own process. Peak RSS is the whole process (Python, server, model, KV cache)."),
        md_table(COMPARE_HEADER, compare_rows(report)),
    ])


def main(argv: list[str] | None = None) -> None:
    """One model's report as JSON on stdout (what `compare` runs in a child process)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m refinegraph.bench.sampling")
    parser.add_argument("--model")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--same", action="store_true", help="the same prompt every time")
    args = parser.parse_args(argv)
    report = asyncio.run(sampling(args.n, args.max_tokens, args.repeats, not args.same, args.model))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
