"""ACAR takes its models cheapest first by configured price unless told otherwise, and its
probes may come from several models in turn (issue 16, point 6)."""

from __future__ import annotations

from typing import Any

from refinegraph import Config, ModelSpec, run
from refinegraph.graphs.acar import mode_models
from refinegraph.models import ScriptedModel

TASK = "Tom has 3 apples and buys 2 more. How many apples does he have?"

# Listed dearest first, as a config file might: price per Mtok in + out.
PRICED = Config(models={"gpt4": ModelSpec(price_input_per_mtok=30, price_output_per_mtok=60),
                        "cheap": ModelSpec(price_input_per_mtok=0.1, price_output_per_mtok=0.2),
                        "mid": ModelSpec(price_input_per_mtok=0.5, price_output_per_mtok=1.5)},
                roles={"default": "cheap"})


def answers(name: str, *values: Any) -> ScriptedModel:
    queue = [f"Some steps. The answer is {v}." for v in values]

    def respond(messages: list[dict[str, Any]]) -> str:
        assert queue, f"model {name!r} was called more often than scripted"
        return queue.pop(0)

    return ScriptedModel(respond, name=name)


def test_mode_models_are_sorted_by_price_unless_given_order_is_asked():
    listed = {"models": ["gpt4", "cheap", "mid"]}
    assert mode_models({**listed, "order": "price"}, PRICED.model_for_role, PRICED) == ["cheap", "mid", "gpt4"]
    assert mode_models({**listed, "order": "given"}, PRICED.model_for_role, PRICED) == ["gpt4", "cheap", "mid"]
    unpriced = Config(models={"a": ModelSpec(), "b": ModelSpec(price_input_per_mtok=1)}, roles={"default": "a"})
    assert mode_models({"models": ["a", "b"]}, unpriced.model_for_role, unpriced) == ["b", "a", "a"]


async def test_acar_runs_the_cheapest_model_first(store):
    models = {"cheap": answers("cheap", 1, 2, 3, 7), "mid": answers("mid", 7), "gpt4": answers("gpt4", 8)}
    result = await run("acar", TASK, store=store, models=models, config=PRICED,
                       params={"probe_model": "cheap", "models": ["gpt4", "cheap", "mid"], "judge": False})
    decided = store.events(result.run_id, types={"route"})[0]
    assert result.state["mode"] == "three" and decided["models"] == ["cheap", "mid", "gpt4"]
    calls = [c["model"] for c in store.events(result.run_id, types={"llm_call"})]
    assert calls == ["cheap", "cheap", "mid", "gpt4"]


def test_probe_plan_takes_the_probe_models_in_turn():
    from refinegraph.graphs.acar import probe_plan

    settings = {"probes": 5, "probe_models": ["a", "b"]}
    assert probe_plan(settings, "a,b") == [("a", 3), ("b", 2)]
    assert probe_plan({"probes": 3, "probe_models": None}, "p") == [("p", 3)]


async def test_mixed_probes_catch_cheap_probes_agreeing_on_a_wrong_answer(store):
    """Three samples of one cheap model agree on 6 (sigma 0: answered 6); mixed with two
    other families, the probes disagree and the run escalates."""
    models = {"cheap": answers("cheap", 6, 6, 6, 6, 6), "mid": answers("mid", 5, 5), "gpt4": answers("gpt4", 5)}
    same = await run("acar", TASK, store=store, models=models, config=PRICED,
                     params={"probe_model": "cheap", "probes": 3, "models": ["cheap", "mid", "gpt4"]})
    assert same.state["mode"] == "one" and same.answer == "6"
    mixed = await run("acar", TASK, store=store, models=models, config=PRICED,
                      params={"probe_models": ["cheap", "mid"], "probes": 2, "models": ["cheap", "mid", "gpt4"],
                              "judge": False})
    probes = [(c["model"], c["role"]) for c in store.events(mixed.run_id, types={"llm_call"})][:2]
    assert probes == [("cheap", "probe"), ("mid", "probe")]
    assert mixed.state["sigma"] == 1.0 and mixed.state["mode"] == "three" and mixed.answer == "5"
