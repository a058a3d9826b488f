"""The pool backend: recorded outputs served as samples, through the run's choke point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refinegraph.config import ConfigError, ModelSpec
from refinegraph.context import RunContext
from refinegraph.models import ModelError, PoolModel, build_model
from refinegraph.trace.store import TraceWriter

SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "pools" / "gsm8k_faithfulcot.jsonl"


@pytest.fixture
def pool_file(tmp_path) -> Path:
    path = tmp_path / "pool.jsonl"
    entries = [
        {"id": "q1", "question": "How many legs has a spider?", "gold": "8",
         "samples": {"b/cot": ["b says 8"], "a/cot": ["a says 8", "a says 6", "a says 10"]}},
        {"id": "q2", "question": "How many legs?", "gold": "?", "samples": {"a/cot": ["short question"]}},
    ]
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    return path


def messages(text: str) -> list[dict]:
    return [{"role": "system", "content": "Solve it."}, {"role": "user", "content": f"Question: {text}\nAnswer:"}]


async def test_samples_come_in_order_without_replacement(store, pool_file):
    store.create_run("r", "t", "t")
    ctx = RunContext(run_id="r", models={"pool": PoolModel("pool", pool_file, ["a/cot", "b/cot"])},
                     roles={"default": "pool"}, writer=TraceWriter(store, "r"))
    first = await ctx.sample("solver", messages("How many legs has a spider?"), n=2, temperature=0.7)
    second = await ctx.sample("solver", messages("How many legs has a spider?"), n=2, temperature=0.7)
    assert first.texts == ["a says 8", "a says 6"] and second.texts == ["a says 10", "b says 8"]
    assert ctx.usage.total_tokens == 0 and ctx.model_calls == 2
    with pytest.raises(ModelError, match="4 completions"):
        await ctx.sample("solver", messages("How many legs has a spider?"), n=1, temperature=0.7)


async def test_the_longest_question_in_the_prompt_wins(pool_file):
    model = PoolModel("pool", pool_file)
    assert (await model.sample(messages("How many legs?"))).texts == ["short question"]
    assert (await model.sample(messages("How many legs has a spider?"))).texts == ["a says 8"]


async def test_unknown_question_is_a_clear_error(pool_file):
    from refinegraph.models import PoolError
    with pytest.raises(PoolError, match="no question of pool"):
        await PoolModel("pool", pool_file).sample(messages("What is the capital of France?"))


def test_config_builds_a_pool_and_says_what_is_missing(pool_file, tmp_path):
    assert isinstance(build_model("p", ModelSpec(backend="pool", pool_file=str(pool_file))), PoolModel)
    with pytest.raises(ConfigError, match="needs pool_file"):
        build_model("p", ModelSpec(backend="pool"))
    with pytest.raises(ConfigError, match="not found"):
        build_model("p", ModelSpec(backend="pool", pool_file=str(tmp_path / "none.jsonl")))


@pytest.mark.skipif(not SHARED_GSM8K.is_file(), reason=f"shared GSM8K pool not at {SHARED_GSM8K}")
async def test_real_gsm8k_pool():
    model = PoolModel("gpt4", SHARED_GSM8K, ["gpt-4/cot"])
    first = json.loads(SHARED_GSM8K.open().readline())
    samples = await model.sample(messages(first["question"]))
    assert "The answer is" in samples.texts[0]
