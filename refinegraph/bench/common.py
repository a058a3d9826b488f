"""What the accuracy benchmarks share: per-method summary, questions.jsonl, the plot.

An outcome is any dataclass with `method`, `correct`, `tokens`, `calls`, `seconds` and
`error` (bench/spider.py, bench/gsm8k.py, bench/pool.py each define theirs).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any


def summarize(outcomes: Sequence[Any], methods: list[str], *, score: str = "accuracy",
              means: Sequence[str] = (), shares: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per method: the share correct (under the key `score`), mean tokens, calls and
    seconds per question, `score` per 1k tokens, errors, the mean of each attribute
    named in `means` (e.g. samples, cost_usd), and for each boolean attribute in `shares`
    ("correct_spider") its share under `score` + its suffix ("ex_spider")."""
    rows = []
    for method in methods:
        mine = [o for o in outcomes if o.method == method]
        if not mine:
            continue
        accuracy = sum(o.correct for o in mine) / len(mine)
        tokens = sum(o.tokens for o in mine) / len(mine)
        row = {"method": method, "questions": len(mine), score: round(accuracy, 4),
               "mean_tokens": round(tokens, 1), "mean_calls": round(sum(o.calls for o in mine) / len(mine), 2),
               "mean_seconds": round(sum(o.seconds for o in mine) / len(mine), 2),
               f"{score}_per_1k_tokens": round(1000 * accuracy / tokens, 4) if tokens else None,
               "errors": sum(1 for o in mine if o.error)}
        for name in shares:
            row[f"{score}_{name.removeprefix('correct_')}"] = round(sum(bool(getattr(o, name)) for o in mine)
                                                                    / len(mine), 4)
        for name in means:
            values = [getattr(o, name) or 0 for o in mine]
            row[f"mean_{name}"] = round(sum(values) / len(values), 8)
        rows.append(row)
    return rows


def write_outcomes(out_dir: Path, outcomes: Sequence[Any], filename: str = "questions.jsonl") -> Path:
    """questions.jsonl: one line per (question, method) outcome."""
    path = out_dir / filename
    with open(path, "w", encoding="utf-8") as handle:
        for outcome in outcomes:
            handle.write(json.dumps(asdict(outcome), ensure_ascii=False) + "\n")
    return path


def plot(out_dir: Path, summary: list[dict[str, Any]], title: str, *, y: str = "accuracy",
         ylabel: str = "accuracy (%)", x: str = "mean_tokens", xlabel: str = "mean tokens per question",
         filename: str = "accuracy.png") -> Path | None:
    """One point per method: `y` (a share, drawn in %) against `x`; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.2))
    markers = "osD^vP*Xhp<>"
    for index, row in enumerate(summary):  # a legend, not labels: methods often share a point
        axes.scatter(row[x], 100 * row[y], s=55, marker=markers[index % len(markers)], label=row["method"],
                     alpha=0.85)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = out_dir / filename
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def split_params(params: dict[str, Any], methods: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`-p key=value` pairs as (for every graph, per method): "graph.key" (or "label.key")
    goes to that method only, anything else to every method that accepts it."""
    shared: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in params.items():
        prefix, dot, name = key.rpartition(".")
        targets = [m for m in methods if dot and prefix in (m, graph_of(m))]
        if dot and not targets:
            raise ValueError(f"-p {key}: {prefix!r} is none of the methods benchmarked ({', '.join(methods)})")
        for method in targets:
            own[method][name] = value
        if not targets:
            shared[key] = value
    return shared, own


def graph_of(method: str) -> str:
    """A method label is a graph name, optionally `@model` (that model plays every role)."""
    return method.partition("@")[0]


def resolve_params(method: str, optional: dict[str, Any], explicit: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The params `method` runs with and the optional keys its graph does not take.

    Graphs validate params with extra="forbid": an optional key (one given for every graph,
    or a bench default) that the graph's params model rejects as unknown is dropped; a key
    given for this graph alone, or a bad value, is an error (ConfigError).
    """
    from pydantic import ValidationError

    from refinegraph.config import ConfigError
    from refinegraph.registry import get_graph
    from refinegraph.runner import compiled_graph

    graph = graph_of(method)
    spec = get_graph(graph)
    optional = {k: v for k, v in optional.items() if k not in explicit}
    dropped: list[str] = []
    for _ in range(len(optional) + 1):
        params = {**optional, **explicit}
        try:
            spec.build(params, checkpointer=None)
            break
        except ValidationError as exc:
            unknown = {str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden" and e["loc"]}
            droppable = unknown & set(optional)
            if not droppable:
                break  # compiled_graph below reports it as a ConfigError
            dropped += sorted(droppable)
            optional = {k: v for k, v in optional.items() if k not in droppable}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad parameters for graph {graph!r}: {exc}") from None
    params = {**optional, **explicit}
    compiled_graph(graph, params)
    return params, dropped


LIVE_ROLES: dict[str, tuple[str, ...]] = {
    "self-refine": ("critic", "refiner"),
    "best-of-n": ("reward",),
    "sets": ("verifier", "corrector"),
    "magicore": ("reward", "reviewer", "refiner"),
    "acar": ("judge",),
    "csc-sql": ("merger",),
}
"""Roles that judge, score or rewrite: their prompts are no task a pool recorded, so a pool
model playing one would answer with recorded reasoning (every verdict a fallback)."""


def live_roles(method: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The roles of `method` that need a live model under `params` (ACAR without its judge
    needs none; a reward-model server plays "reward" when `reward_model` names one)."""
    graph = graph_of(method)
    roles = LIVE_ROLES.get(graph, ())
    if graph == "acar" and params.get("judge") is False:
        return ()
    if params.get("reward_model"):
        roles = tuple(r for r in roles if r != "reward")
    return roles


def check_live_roles(method: str, params: dict[str, Any], config: Any) -> None:
    """Refuse a method whose judging roles would be played by a pool model (a pool answers
    only the task's own prompt), naming the role, its model and the way out."""
    for role in live_roles(method, params):
        name = config.model_for_role(role)
        if config.spec(name).backend == "pool":
            live = sorted(n for n, s in config.models.items() if s.backend != "pool")
            raise ValueError(f"{method}: role {role!r} judges or rewrites, and a pool answers only the task's "
                             f"recorded prompt, but it is played by pool model {name!r}. Give it a live model "
                             f"(a config with roles.{role} = one of: {', '.join(live) or 'none configured'})"
                             + (", or -p acar.judge=false" if graph_of(method) == "acar" else ""))
