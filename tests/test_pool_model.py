"""The pool backend: recorded outputs served as samples, through the run's choke point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refinegraph.config import ConfigError, ModelSpec
from refinegraph.context import RunContext
from refinegraph.models import ModelError, PoolError, PoolModel, build_model
from refinegraph.models.pool import estimate_tokens
from refinegraph.trace.store import TraceWriter


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
    prompt = estimate_tokens("Solve it." + "Question: How many legs has a spider?\nAnswer:")
    assert first.completion_tokens == [2, 2] and second.completion_tokens == [3, 2]  # ceil(chars / 4)
    assert ctx.usage.prompt_tokens == 2 * prompt and ctx.usage.completion_tokens == 9 and ctx.model_calls == 2
    with pytest.raises(ModelError, match="4 completions"):
        await ctx.sample("solver", messages("How many legs has a spider?"), n=1, temperature=0.7)


async def test_the_longest_question_in_the_prompt_wins(pool_file):
    model = PoolModel("pool", pool_file)
    assert (await model.sample(messages("How many legs?"))).texts == ["short question"]
    assert (await model.sample(messages("How many legs has a spider?"))).texts == ["a says 8"]


async def test_unknown_question_is_a_clear_error(pool_file):
    with pytest.raises(PoolError, match="holds no recorded question that appears in this prompt"):
        await PoolModel("pool", pool_file).sample(messages("What is the capital of France?"))


def test_config_builds_a_pool_and_says_what_is_missing(pool_file, tmp_path):
    assert isinstance(build_model("p", ModelSpec(backend="pool", pool_file=str(pool_file))), PoolModel)
    with pytest.raises(ConfigError, match="needs pool_file"):
        build_model("p", ModelSpec(backend="pool"))
    with pytest.raises(ConfigError, match="not found"):
        build_model("p", ModelSpec(backend="pool", pool_file=str(tmp_path / "none.jsonl")))


async def test_real_gsm8k_pool(pools):
    gsm8k = pools / "gsm8k_faithfulcot.jsonl"
    model = PoolModel("gpt4", gsm8k, ["gpt-4/cot"])
    first = json.loads(gsm8k.open().readline())
    samples = await model.sample(messages(first["question"]))
    assert "The answer is" in samples.texts[0]


def forty(tmp_path) -> Path:
    path = tmp_path / "forty.jsonl"
    entries = [{"id": "q1", "question": "Pick a number.", "gold": "1",
                "samples": {"m/x40": [f"The answer is {i}." for i in range(40)]}},
               {"id": "q2", "question": "Pick a date.", "gold": "1", "samples": {"m/x40": ["01/01/2020"] * 2}}]
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    return path


async def test_shuffle_is_seeded_per_question_and_draws_without_replacement(tmp_path):
    path = forty(tmp_path)
    recorded = [f"The answer is {i}." for i in range(40)]
    draws = {}
    for seed in (0, 0, 1):
        model = PoolModel("m", path, ["m/x40"], order="shuffle", seed=seed)
        texts = []
        for n in (1, 9, 30):
            texts += (await model.sample(messages("Pick a number."), n=n)).texts
        assert sorted(texts) == sorted(recorded)  # every completion once: without replacement
        with pytest.raises(PoolError, match="40 completions for this question \\(40 used\\); 1 more"):
            await model.sample(messages("Pick a number."))
        draws.setdefault(seed, []).append(texts)
    assert draws[0][0] == draws[0][1]  # same seed, same order
    assert draws[0][0] != draws[1][0] and draws[0][0] != recorded  # another seed, another order; not recorded
    # the permutation depends on the question, not on what was asked before it
    model = PoolModel("m", path, ["m/x40"], order="shuffle", seed=0)
    await model.sample(messages("Pick a date."), n=2)
    assert (await model.sample(messages("Pick a number."))).texts == draws[0][0][:1]
    assert (await PoolModel("m", path, ["m/x40"]).sample(messages("Pick a number."), n=3)).texts == recorded[:3]
    with pytest.raises(ValueError, match="recorded' or 'shuffle"):
        PoolModel("m", path, order="random")  # type: ignore[arg-type]


def test_config_passes_order_and_seed(tmp_path):
    model = build_model("p", ModelSpec(backend="pool", pool_file=str(forty(tmp_path)), pool_order="shuffle",
                                       pool_seed=7))
    assert model.order == "shuffle" and model.seed == 7


async def test_a_prompt_without_record_fails_once_clearly_and_unretried(store, pool_file):
    """A critic's prompt holds no recorded question: one attempt, a ModelError naming why."""
    from refinegraph.config import Config
    store.create_run("r", "t", "t")
    config = Config(models={"pool": ModelSpec(backend="pool", pool_file=str(pool_file))}, roles={"default": "pool"})
    ctx = RunContext(run_id="r", models={"pool": PoolModel("pool", pool_file)}, roles={"default": "pool"},
                     writer=TraceWriter(store, "r"), config=config)
    critic = [{"role": "system", "content": "You are a strict reviewer."},
              {"role": "user", "content": "Review this answer: 8"}]
    with pytest.raises(ModelError, match="holds no recorded question") as caught:
        await ctx.sample("critic", critic)
    assert caught.value.attempts == 1 and caught.value.error_class == "PoolError" and ctx.retries == 0
    ctx.writer.flush()
    assert [e["error_class"] for e in store.events("r", types={"error"})] == ["PoolError"]


async def test_estimated_usage_is_priced_and_recorded_as_an_estimate(store, pool_file):
    from refinegraph.config import Config
    store.create_run("r", "t", "t")
    spec = ModelSpec(backend="pool", pool_file=str(pool_file), pool_sources=["a/cot"],
                     price_input_per_mtok=1.0, price_output_per_mtok=10.0)
    config = Config(models={"pool": spec}, roles={"default": "pool"})
    ctx = RunContext(run_id="r", models={"pool": build_model("pool", spec)}, roles={"default": "pool"},
                     writer=TraceWriter(store, "r"), config=config)
    await ctx.sample("solver", messages("How many legs has a spider?"), n=3)
    prompt = estimate_tokens("Solve it.Question: How many legs has a spider?\nAnswer:")
    completion = 2 + 2 + 3  # "a says 8", "a says 6", "a says 10": ceil(chars / 4)
    assert ctx.usage.prompt_tokens == prompt and ctx.usage.completion_tokens == completion
    assert ctx.cost_usd == pytest.approx((prompt * 1.0 + completion * 10.0) / 1e6)
    ctx.writer.flush()
    (call,) = store.events("r", types={"llm_call"})
    assert call["server_usage"] == [{"estimate": "ceil(chars/4)", "prompt_tokens": prompt,
                                     "completion_tokens": completion}]
    assert call["choice_tokens"] == [2, 2, 3] and call["cost_usd"] == pytest.approx(ctx.cost_usd)
