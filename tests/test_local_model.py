"""Integration on the real embedded model (llama.cpp on loopback): real HTTP, real tokens."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import httpx
import pytest

from refinegraph import Budget, replay, run
from refinegraph.context import RunContext
from refinegraph.models import LocalModel
from refinegraph.runner import decisions
from refinegraph.trace.store import TraceWriter
from refinegraph.trace.verify import verify_run

pytestmark = pytest.mark.local

TASK = "Write one sentence that explains what a prime number is."


@pytest.fixture(scope="module")
def local_model():
    """One embedded server for the whole test session (the process's singleton)."""
    return LocalModel("local")


async def tokenize(address: str, text: str) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{address}/tokenize", json={"content": text})
        return len(response.json()["tokens"])


async def test_self_refine_on_the_embedded_model(store, local_model):
    result = await run("self-refine", TASK, store=store, models={"local": local_model})
    assert result.answer and result.stop_reason in {"done", "no_improvement", "max_iterations"}
    assert verify_run(store, result.run_id).ok
    calls = store.events(result.run_id, types={"llm_call"})
    paid = [c for c in calls if c["source"] == "backend"]
    # An identical call inside one run (same messages, sampling and seed) is served from
    # the run's cache and recorded as such.
    assert len(paid) == result.model_calls >= 2
    assert len(calls) - len(paid) == result.cache_hits
    for call in paid:
        # n=1: the event's counts are exactly what the server's usage said.
        (server,) = call["server_usage"]
        assert call["prompt_tokens"] == server["prompt_tokens"] > 0
        assert call["completion_tokens"] == server["completion_tokens"] > 0
        assert call["cached_prompt_tokens"] == server["prompt_tokens_details"]["cached_tokens"]
    assert result.usage["total_tokens"] == sum(c["prompt_tokens"] + c["completion_tokens"] for c in paid)
    critic_calls = [c for c in calls if c["role"] == "critic"]
    assert critic_calls[0]["params"]["response_format"]["type"] == "json_schema"

    # Replay: no model is called, and the same decisions and answer come back.
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.cache_hits == len(calls)
    assert replayed.answer == result.answer and replayed.stop_reason == result.stop_reason
    assert replayed.usage == result.usage
    assert replayed.decisions_match and decisions(store, result.run_id)
    assert verify_run(store, replayed.run_id).ok


async def test_n_samples_are_counted_per_choice(store, local_model):
    store.create_run("r", "test", "t")
    ctx = RunContext(run_id="r", models={"local": local_model}, roles={"default": "local"},
                     writer=TraceWriter(store, "r"))
    samples = await ctx.sample("solver", [{"role": "user", "content": "Name a colour."}], n=4,
                               temperature=1.0, max_tokens=24, seed=7)
    assert len(samples.texts) == 4 and samples.requests == 1
    expected = [await tokenize(local_model.address, t) + (r == "stop")
                for t, r in zip(samples.texts, samples.finish_reasons)]
    assert samples.completion_tokens == expected
    event = store.events("r", types={"llm_call"})[0]
    assert event["choice_tokens"] == expected and event["completion_tokens"] == sum(expected)
    # llama.cpp's own usage counts one choice only: that is why we count ourselves.
    assert event["server_usage"][0]["completion_tokens"] < sum(expected)


async def test_n_above_the_servers_slots_is_split_and_recorded(store, local_model):
    store.create_run("r", "test", "t")
    ctx = RunContext(run_id="r", models={"local": local_model}, roles={"default": "local"},
                     writer=TraceWriter(store, "r"))
    slots = local_model.max_n
    samples = await ctx.sample("solver", [{"role": "user", "content": "Say a word."}], n=slots + 2,
                               temperature=1.0, max_tokens=8, seed=1)
    assert len(samples.texts) == slots + 2
    assert store.events("r", types={"llm_call"})[0]["requests"] == 2


async def test_tiny_token_budget_stops_with_an_answer(store, local_model):
    result = await run("self-refine", TASK, store=store, models={"local": local_model},
                       budget=Budget(max_tokens=150))
    assert result.stop_reason == "budget"
    assert result.answer, "the solver's capped answer is the best so far"
    assert result.usage["total_tokens"] <= 150 + 20
    assert store.events(result.run_id, types={"budget"})[0]["reason"] == "tokens"
    assert verify_run(store, result.run_id).ok


async def test_a_budgeted_call_counts_its_prompt_with_the_servers_own_template(store, local_model):
    """Under a token budget the prompt is counted exactly (the server's chat template and
    tokenizer), not estimated: the count is the prompt_tokens the server then reports."""
    store.create_run("r", "test", "t")
    ctx = RunContext(run_id="r", models={"local": local_model}, roles={"default": "local"},
                     writer=TraceWriter(store, "r"), budget=Budget(max_tokens=2000))
    messages = [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Which colour is the sky on a clear day? Ünïcode: 東京"}]
    await ctx.sample("solver", messages, max_tokens=8)
    event = store.events("r", types={"llm_call"})[0]
    assert event["params"]["prompt_count"] == "tokenizer"
    assert event["params"]["prompt_tokens_assumed"] == event["prompt_tokens"] > 0
    assert not store.events("r", types={"fallback"})


def test_cli_json_run_then_verify_and_replay(rg_home):
    """The README's path, as a user runs it: a fresh process, stdout is one JSON object."""
    env = {**os.environ, "REFINEGRAPH_HOME": str(rg_home)}
    cli = [sys.executable, "-m", "refinegraph.cli.app"]
    done = subprocess.run([*cli, "run", "self-refine", TASK, "--json"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {"answer", "run_id", "stop_reason", "usage", "model_calls"} <= data.keys()
    assert data["answer"] and data["model_calls"] >= 2
    verified = subprocess.run([*cli, "trace", "verify", data["run_id"]], env=env, capture_output=True, text=True)
    assert verified.returncode == 0 and "chain holds" in verified.stdout
    replayed = subprocess.run([*cli, "trace", "replay", data["run_id"], "--json"], env=env,
                              capture_output=True, text=True, timeout=300)
    assert replayed.returncode == 0, replayed.stderr
    again = json.loads(replayed.stdout)
    assert again["model_calls"] == 0 and again["answer"] == data["answer"]
    exported = subprocess.run([*cli, "trace", "export", data["run_id"]], env=env, capture_output=True, text=True)
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert lines[0]["type"] == "run_started" and lines[-1]["type"] == "run_finished"
    assert all(line["prev_hash"] == previous["hash"] for previous, line in itertools.pairwise(lines))


def test_cli_plain_run_ends_with_the_run_id(rg_home):
    env = {**os.environ, "REFINEGRAPH_HOME": str(rg_home)}
    done = subprocess.run([sys.executable, "-m", "refinegraph.cli.app", "run", "self-refine", "Say hello.",
                           "--param", "max_iterations=0"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("run: ") and len(last) == len("run: ") + 32


def test_the_server_shares_one_small_quantised_cache(tmp_path):
    """The footprint: 8 slots share 6,144 q8_0 tokens (not 8 x 4,096 f16 reserved up front), weights read once."""
    xllamacpp = pytest.importorskip("xllamacpp")
    from refinegraph.config import ModelSpec
    from refinegraph.models import build_model
    from refinegraph.models.local import ServerSettings, _params

    model = build_model("local", ModelSpec())
    assert model._timeout == 600.0 and ModelSpec(backend="openai").timeout_s == 120.0
    settings = ServerSettings(**model.settings)
    params = _params(xllamacpp, tmp_path / "m.gguf", settings)
    assert params.n_parallel == 8 and params.kv_unified and params.n_ctx == 6144
    assert params.cache_type_k == params.cache_type_v == xllamacpp.ggml_type.GGML_TYPE_Q8_0
    assert params.flash_attn_type == xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED
    assert params.load_mode == xllamacpp.llama_load_mode.LLAMA_LOAD_MODE_NONE
    assert params.cache_prompt and params.cache_ram_mib == 0
    many = _params(xllamacpp, tmp_path / "m.gguf", ServerSettings(n_parallel=32))
    assert many.kv_unified and many.n_ctx == 32 * 768
    per_slot = _params(xllamacpp, tmp_path / "m.gguf", ServerSettings(kv_cache_tokens=None, kv_cache_type="f16"))
    assert not per_slot.kv_unified and per_slot.n_ctx == 8 * 4096
