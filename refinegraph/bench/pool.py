"""`refinegraph bench pool`: sampling, voting and routing methods on recorded model outputs.

Each method answers each question of a pool file (data/pools/*.jsonl) through the pool
backend: its samples are what the recorded models said, served without replacement, so
accuracy, samples served, (estimated) tokens and cost per method can be measured offline.
Tokens are the pool backend's estimate, ceil(characters/4); cost uses each pool model's
price per Mtok from the config (the default configs' prices are illustrative).

Default configs (written into the report as config.toml; the same as
examples/pools/date.toml and examples/pools/gsm8k.toml):

- date (BIG-bench Date Understanding): "ltm40" = code-davinci-002/ltm-x40 (40 least-to-most
  samples, priced cheap), "gpt35" = gpt-3.5-turbo/cot, "gpt4" = gpt-4/cot (1 greedy sample
  each). Voting graphs sample ltm40; ACAR probes ltm40 and escalates to gpt35, then gpt4.
- gsm8k: one model per recorded source, "ensemble" = all six (6 samples, strongest first,
  so ties go to the stronger model), and "probe3" = code-davinci-001, text-davinci-002 and
  text-davinci-003 (3 samples). Voting graphs sample the ensemble; ACAR probes probe3 (three
  cheap models' greedy answers stand in for three cheap samples: the pool holds one
  completion per model) and escalates to codex (code-davinci-002), gpt35, gpt4.

Params every applicable graph gets unless -p says otherwise: answer=<the answer type>;
max_tokens=2048 (above every recorded completion: only a --budget cuts one, as it would a
live model's);
self-consistency and adaptive-sc: n = completions per question of the default model;
acar: probe/mode models as above (with a foreign --config: probe = the default role's
model, modes = the configured models in file order, cheapest first), judge=False (a pool
holds no record for a judge's prompt), mode_params {"n": 1, "answer": <type>}.
A method label may be `graph@model` (that model plays every role), e.g. greedy@gpt4.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinegraph.bench.common import graph_of
from refinegraph.config import Config, ModelSpec
from refinegraph.models.pool import PoolModel
from refinegraph.runner import RunFailed, run
from refinegraph.tools.answers import TASK_ANSWERS, answer_type_for_task, get_projection, projection_names
from refinegraph.trace.store import TraceStore

PRICES_NOTE = ("prices are illustrative (USD per million tokens, near published list prices of the time); "
               "tokens are estimated as ceil(chars/4)")

# (price in, price out) per Mtok: illustrative, near published list prices.
_PRICES = {
    "code-davinci-001/cot": (2.0, 2.0), "code-davinci-002/cot": (2.0, 2.0), "code-davinci-002/ltm-x40": (0.15, 0.60),
    "text-davinci-002/cot": (20.0, 20.0), "text-davinci-003/cot": (20.0, 20.0),
    "gpt-3.5-turbo/cot": (0.50, 1.50), "gpt-4/cot": (30.0, 60.0),
}
_GSM8K_NAMES = {"code-davinci-001/cot": "davinci1", "code-davinci-002/cot": "codex", "text-davinci-002/cot": "tdv2",
                "text-davinci-003/cot": "tdv3", "gpt-3.5-turbo/cot": "gpt35", "gpt-4/cot": "gpt4"}
_STRONGEST_FIRST = ["gpt-4/cot", "gpt-3.5-turbo/cot", "text-davinci-003/cot", "code-davinci-002/cot",
                    "text-davinci-002/cot", "code-davinci-001/cot"]
_PROBE3 = ["code-davinci-001/cot", "text-davinci-002/cot", "text-davinci-003/cot"]


@dataclass
class Question:
    index: int
    id: str
    question: str
    gold: str


@dataclass
class Outcome:
    question: int
    id: str
    method: str
    answer: str | None
    gold: str
    correct: bool
    samples: int
    tokens: int
    cost_usd: float
    calls: int
    seconds: float
    run_id: str
    stop_reason: str
    error: str | None = None


def load_pool(path: Path, *, limit: int | None = None) -> tuple[list[Question], str]:
    """The pool's questions (first `limit`) and its task name (the records' `task` field, ""
    when they name none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pool file not found: {path}")
    questions, task = [], ""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if limit is not None and len(questions) >= limit:
                break
            if line.strip():
                entry = json.loads(line)
                task = task or entry.get("task", "")
                questions.append(Question(len(questions), entry.get("id", str(len(questions))),
                                          entry["question"].strip(), str(entry["gold"])))
    return questions, task.lower()


def answer_kind(task: str, path: Path) -> str:
    """The answer type of a pool's task (tools.answers.TASK_ANSWERS); a pool whose records
    name no task, or a task with no known type, is an error naming what is available."""
    if not task:
        raise ValueError(f"the records of {Path(path).name} name no task; give the answer type with --answer "
                         f"({', '.join(projection_names())})")
    return answer_type_for_task(task)


def _model(path: Path, sources: list[str], price: tuple[float, float]) -> ModelSpec:
    return ModelSpec(backend="pool", pool_file=str(path), pool_sources=sources,
                     price_input_per_mtok=price[0], price_output_per_mtok=price[1])


def default_config(path: Path, task: str) -> tuple[Config, dict[str, dict[str, Any]]]:
    """The default models and roles for a shared reasoning pool, and per-graph default params."""
    path = Path(path)
    if task == "date":
        models = {"ltm40": _model(path, ["code-davinci-002/ltm-x40"], _PRICES["code-davinci-002/ltm-x40"]),
                  "gpt35": _model(path, ["gpt-3.5-turbo/cot"], _PRICES["gpt-3.5-turbo/cot"]),
                  "gpt4": _model(path, ["gpt-4/cot"], _PRICES["gpt-4/cot"])}
        acar = {"probe_model": "ltm40", "models": ["ltm40", "gpt35", "gpt4"]}
        default = "ltm40"
    elif task == "gsm8k":
        models = {name: _model(path, [source], _PRICES[source]) for source, name in _GSM8K_NAMES.items()}
        models["probe3"] = _model(path, _PROBE3, _mean_price(_PROBE3))
        models["ensemble"] = _model(path, _STRONGEST_FIRST, _mean_price(_STRONGEST_FIRST))
        acar = {"probe_model": "probe3", "models": ["codex", "gpt35", "gpt4"]}
        default = "ensemble"
    else:
        raise ValueError(f"no default config for task {task!r} (there are for date and gsm8k): give --config "
                         f"with pool models over its sources ({', '.join(sorted(sources_of(path)))})")
    config = Config(models=models, roles={"default": default})
    return config, {"acar": acar}


def sources_of(path: Path) -> set[str]:
    """Every source a pool file records."""
    names: set[str] = set()
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                names.update(json.loads(line)["samples"])
    return names


def check_pool_models(config: Config) -> None:
    """Every pool model of the config opened once: a source its file does not record is an
    error naming the recorded ones (PoolError), before any question runs."""
    for name, spec in config.models.items():
        if spec.backend == "pool" and spec.pool_file:
            PoolModel(name, spec.pool_file, spec.pool_sources)


FIT_SHARE = 0.9
"""The share of gold answers an answer type must read for it to fit a pool."""


def check_answer_fits(questions: list[Question], kind: str, task: str) -> None:
    """An answer type that reads too few of the pool's gold answers does not fit its data
    (a Last Letters pool read as numbers would score 0% with no error): refuse it."""
    if not questions:
        return
    project = get_projection(kind)
    read = sum(project(q.gold) is not None for q in questions)
    if read < FIT_SHARE * len(questions):
        hint = f"; the records' task {task!r} reads as {TASK_ANSWERS[task]!r}" if task in TASK_ANSWERS else ""
        raise ValueError(f"answer type {kind!r} reads only {read} of {len(questions)} gold answers of this pool "
                         f"(e.g. {questions[0].gold[:60]!r}){hint}; answer types: {', '.join(projection_names())}")


def _mean_price(sources: list[str]) -> tuple[float, float]:
    """An illustrative price for a set of sources: the mean of theirs (each sample one model's)."""
    return (round(sum(_PRICES[s][0] for s in sources) / len(sources), 4),
            round(sum(_PRICES[s][1] for s in sources) / len(sources), 4))


def config_toml(config: Config) -> str:
    """The config as a TOML file `--config` reads back."""
    lines = []
    for name, spec in config.models.items():
        lines.append(f"[models.{name}]")
        for key, value in spec.model_dump(exclude_defaults=True).items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    lines.append("[roles]")
    lines += [f"{role} = {json.dumps(model)}" for role, model in config.roles.items()]
    return "\n".join(lines) + "\n"


def with_pool_file(config: Config, path: Path) -> Config:
    """Every pool model of the config reading `path` (the bench's --pool)."""
    models = {name: spec.model_copy(update={"pool_file": str(path)}) if spec.backend == "pool" else spec
              for name, spec in config.models.items()}
    return config.model_copy(update={"models": models})


def samples_per_question(config: Config, model: str) -> int | None:
    """The completions every question holds for a pool model (the fewest over questions)."""
    spec = config.spec(model)
    if spec.backend != "pool" or not spec.pool_file:
        return None
    pool = PoolModel(model, spec.pool_file, spec.pool_sources)
    return min((len(pool.completions(entry)) for entry in pool.entries()), default=None)


def default_params(config: Config, kind: str, defaults: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per graph, the optional params of the module docstring (a graph that rejects one drops it)."""
    default_model = config.model_for_role("solver")
    n = samples_per_question(config, default_model)
    acar = dict(defaults.get("acar", {}))
    named = [acar.get("probe_model"), *acar.get("models", [])]
    if not acar or any(name not in config.models for name in named if name):
        others = [name for name in config.models if name != default_model]
        acar = {"probe_model": default_model, "models": ([default_model] + others)[:3]}
    acar.update({"judge": False, "mode_params": {"n": 1, "answer": kind, "max_tokens": POOL_MAX_TOKENS},
                 "max_tokens": POOL_MAX_TOKENS})
    params: dict[str, dict[str, Any]] = {"acar": acar}
    if n:
        params["self-consistency"] = {"n": n}
        params["adaptive-sc"] = {"n": n}
    return params


POOL_MAX_TOKENS = 2048
"""The max_tokens pool runs get by default: above the longest recorded completion of the
shared pools (about 1,050 estimated tokens), so a completion is cut only by a budget."""


async def answer(question: Question, method: str, config: Config, params: dict[str, Any], kind: str,
                 store: TraceStore, budget: Any = None) -> Outcome:
    """One method on one recorded question: the answer scored, and what it cost."""
    started = time.perf_counter()
    error = None
    try:
        result = await run(graph_of(method), question.question, config=config, params=params, store=store,
                           budget=budget, checkpoint=False)
    except RunFailed as exc:
        result, error = exc.result, str(exc.cause)[:300]
    seconds = time.perf_counter() - started
    project = get_projection(kind)
    text = None if error else result.answer
    predicted = project(text) if text else None
    correct = predicted is not None and predicted == project(question.gold)
    served = sum(e["params"].get("n", 1) for e in store.events(result.run_id, types={"llm_call"})
                 if e.get("source") == "backend")
    return Outcome(question.index, question.id, method, text, question.gold, correct, served,
                   result.usage["total_tokens"], round(result.cost_usd or 0.0, 8), result.model_calls,
                   round(seconds, 3), result.run_id, result.stop_reason, error)


def rank_sources(dev_pool: Path, kind: str, questions: set[str]) -> dict[str, float]:
    """Each source's accuracy (its first completion, read as `kind`) on a selection pool;
    a selection pool that shares a question with the scored one is refused (no peeking)."""
    project = get_projection(kind)
    right: dict[str, int] = {}
    seen = 0
    with open(dev_pool, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry["question"].strip() in questions:
                raise ValueError(f"--select-on {Path(dev_pool).name} shares questions with the scored pool: "
                                 f"selection would peek")
            seen += 1
            gold = project(str(entry["gold"]))
            for source, texts in entry["samples"].items():
                answer = project(texts[0]) if texts else None
                right[source] = right.get(source, 0) + (answer is not None and answer == gold)
    if not seen:
        raise ValueError(f"--select-on {Path(dev_pool).name} holds no question")
    return {source: count / seen for source, count in right.items()}


def ordered_by(config: Config, accuracy: dict[str, float]) -> Config:
    """Every pool model's sources strongest first by `accuracy` (ties keep their order),
    so that a vote's ties go to the source that did best on the selection questions."""
    models = {}
    for name, spec in config.models.items():
        if spec.backend == "pool" and spec.pool_sources and len(spec.pool_sources) > 1:
            ranked = sorted(spec.pool_sources, key=lambda s: -accuracy.get(s, 0.0))
            spec = spec.model_copy(update={"pool_sources": ranked})
        models[name] = spec
    return config.model_copy(update={"models": models})
