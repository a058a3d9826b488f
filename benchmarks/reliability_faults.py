"""Faults between refinegraph and its model, measured: the `faults` part of `refinegraph bench reliability`.

The embedded llama.cpp server runs behind the fault proxy (benchmarks.faultproxy),
which fails most requests on purpose (resets, 5xx/429 with and without Retry-After,
stalls past the client's timeout, bodies cut short or garbled, slow answers), /tokenize
included. A mix of cheap methods runs `runs` times through `refinegraph.run` against an
`openai` model entry at the proxy, and each expectation is checked from the traces and
the proxy's counters:

- every run ends answered, or with a typed error that its trace records (by class);
- every trace verifies and is sealed;
- no event is lost: the events each run's writer chained equal the rows in the store;
- retries are bounded (no request retried more than max_retries; attempts of a call at
  most max_retries + 1), and the retry events equal the runs' RunResult.retries;
- the requests the proxy received equal the attempts the traces record (completions:
  llm_call and error attempts; /tokenize: one per counted choice plus its retries);
- most calls needed a retry (otherwise the faults did not bite);
- a run that survived a failed call recorded a fallback for it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.faultproxy import FAILING_KINDS, FAULT_KINDS, FaultProxy, ProxyStats, spread
from benchmarks.reliability_common import Section
from refinegraph.config import Config, ModelSpec, RetryPolicy
from refinegraph.models.base import ModelError
from refinegraph.models.local import LocalModel
from refinegraph.runner import RunFailed, RunResult, run
from refinegraph.trace import store as trace_store
from refinegraph.trace.store import TraceStore
from refinegraph.trace.verify import verify_run

CHAT = "/v1/chat/completions"
TOKENIZE = "/tokenize"
MODEL = "faulty"

METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("greedy", {"max_tokens": 24}),
    ("self-consistency", {"n": 3, "max_tokens": 24}),
    ("self-refine", {"max_iterations": 1, "solver_max_tokens": 24, "critic_max_tokens": 32,
                     "refiner_max_tokens": 24}),
    ("best-of-n", {"n": 2, "max_tokens": 24, "judge_max_tokens": 24}),
    ("adaptive-sc", {"n": 4, "batch_size": 2, "max_tokens": 24}),
    ("sets", {"m": 2, "r": 1, "max_tokens": 24, "verifier_max_tokens": 24}),
)
"""Cheap methods, cycled over the runs: single calls, n samples in one request (counted
with /tokenize), sequential refine loops, parallel branches (Send) and LLM judges."""

TASKS = (
    "What is 7 + 5?", "What is 9 times 3?", "What is 20 minus 8?", "What is 3 + 4 + 5?",
    "What is half of 18?", "A box holds 6 eggs. How many eggs are in 4 boxes?",
    "Tom has 10 apples and gives away 3. How many are left?", "What is 15 divided by 3?",
)

FALLBACKS_FOR_FAILED_CALLS = frozenset({"judge_failed", "reward_model_error"})
"""Fallbacks a graph records when it goes on without a call that failed for good."""

COMPLETION_ERROR = {
    "reset_before": "APIConnectionError", "reset_after": "APIConnectionError", "truncated_body": "APIConnectionError",
    "http_500": "InternalServerError", "http_502": "InternalServerError", "http_503": "InternalServerError",
    "http_429": "RateLimitError", "stall": "APITimeoutError", "truncated_json": "MalformedResponse",
    "malformed_json": "MalformedResponse", "wrong_shape": "MalformedResponse",
}
"""The error each failing fault kind raises on a completion (the openai SDK's classes, and
refinegraph's MalformedResponse for a 2xx body that is no chat completion)."""

UNCONNECTED = ("ConnectTimeout", "ConnectError")
"""Transport errors of an attempt that never reached the server (no request to count)."""

Outcome = tuple[str, RunResult, BaseException | None]


def _unconnected(event: dict[str, Any]) -> bool:
    """Whether a failed attempt never reached the server: its error, or the transport error
    beneath the SDK's (see refinegraph.models.retry.describe), is a connect error."""
    return event["error_class"] in UNCONNECTED or any(f"(cause: {c})" in event["message"] for c in UNCONNECTED)


async def faults_section(runs: int = 200, fault_rate: float = 0.7, concurrency: int = 4, *,
                         timeout_s: float = 15.0, max_retries: int = 6, seed: int = 0, retry_after_s: float = 1.0,
                         stall_s: float = 30.0, slow_total_s: float = 0.5, checkpoint: bool = True,
                         upstream: str | None = None, threads: int | None = 1,
                         workdir: Path | None = None) -> Section:
    """Run `runs` graph runs through a fault proxy at `fault_rate` and check every expectation.

    `fault_rate` is the chance that a request (completion or /tokenize) gets one of the
    proxy's fault kinds, shared evenly; all kinds but "slow" fail the attempt. The model
    entry's timeout (`timeout_s`) must be short enough that stalls trip it within the run,
    and long enough that the upstream's own answers fit in it (a genuine timeout is
    counted apart from the injected ones). `upstream` is the root URL of another
    OpenAI-compatible server with /tokenize to stand behind the proxy (default: the
    embedded llama.cpp server, started here with `threads` threads: 1 by default, since
    llama.cpp's workers spin at every step and collapse (10x slower, measured) on cores
    that other processes share; a server already running in this process is reused as is).
    """
    started = time.perf_counter()
    section = Section(name="faults", ok=True)
    local = LocalModel("upstream", n_parallel=max(8, concurrency), threads=threads) if upstream is None else None
    if local is not None:
        upstream = local.address  # starts the embedded server (once a process)
    policy = RetryPolicy(max_retries=max_retries, initial_wait_s=0.05, max_wait_s=max(1.0, retry_after_s))
    proxy = FaultProxy(upstream, rates=spread(fault_rate), seed=seed, retry_after_s=retry_after_s,
                       stall_s=stall_s, slow_total_s=slow_total_s)
    written: Counter[str] = Counter()

    def count(writer: Any, event: Any) -> None:
        written[writer.run_id] += 1

    with tempfile.TemporaryDirectory(prefix="refinegraph-faults-") as tmp:
        root = Path(workdir or tmp)
        store = TraceStore(root / "traces.sqlite")
        trace_store.OBSERVERS.append(count)
        try:
            with proxy.in_thread():
                config = Config(models={MODEL: ModelSpec(
                    backend="openai", base_url=f"{proxy.url}/v1", model="smollm2-135m-instruct",
                    timeout_s=timeout_s, count_tokens="tokenize", retry=policy)}, roles={"default": MODEL})
                gate = asyncio.Semaphore(concurrency)

                async def one(index: int) -> Outcome:
                    graph, params = METHODS[index % len(METHODS)]
                    task = TASKS[(index // len(METHODS)) % len(TASKS)]
                    async with gate:
                        try:
                            result = await run(graph, task, config=config, params={**params, "seed": index},
                                               store=store, checkpoint=checkpoint,
                                               checkpoint_path=root / "checkpoints.sqlite")
                            return graph, result, None
                        except RunFailed as failed:
                            return graph, failed.result, failed.cause

                finished = await asyncio.gather(*[one(i) for i in range(runs)], return_exceptions=True)
                stats = proxy.stats()
        finally:
            trace_store.OBSERVERS.remove(count)
            if local is not None:
                await local.aclose()
        outcomes: list[Outcome] = []
        for index, item in enumerate(finished):
            if isinstance(item, BaseException):  # not a recorded run failure: a bug, named here
                section.expect(False, f"run {index} raised {type(item).__name__}: {item}")
            else:
                outcomes.append(item)
        _check(section, store, outcomes, stats, written, max_retries)
        store.close()
    section.seconds = round(time.perf_counter() - started, 1)
    section.figures.update({"fault_rate": fault_rate, "concurrency": concurrency, "timeout_s": timeout_s,
                            "max_retries": max_retries, "seed": seed})
    section.lines = _lines(section) + section.lines
    return section


def _check(section: Section, store: TraceStore, outcomes: list[Outcome], stats: ProxyStats,
           written: Counter[str], max_retries: int) -> None:
    """Every expectation of the module docstring, from the traces and the proxy's counters."""
    by_method: dict[str, Counter[str]] = {}
    failed_attempts: Counter[tuple[str, str]] = Counter()  # (request, error class) -> attempts that failed
    fallbacks: Counter[str] = Counter()
    calls = calls_retried = failed_calls = cancelled_calls = completion_attempts = tokenize_expected = 0
    unconnected: Counter[str] = Counter()  # request -> failed attempts that never reached the server
    retry_events = result_retries = events_lost = worst_attempt = 0
    for graph, result, cause in outcomes:
        run_id = result.run_id
        events = store.events(run_id)
        lost = written[run_id] - len(events)
        events_lost += max(0, lost)
        section.expect(lost == 0, f"run {run_id}: its writer chained {written[run_id]} events, "
                                  f"the store has {len(events)}")
        report = verify_run(store, run_id)
        if report.ok and report.sealed:
            section.traces_verified += 1
        else:
            section.traces_failed += 1
            section.expect(False, f"run {run_id}: trace {'not sealed' if report.ok else report.problem}")
        if cause is None:
            outcome = "answered" if result.answer is not None else "finished, no answer read"
        else:
            error_class = cause.error_class if isinstance(cause, ModelError) else type(cause).__name__
            outcome = f"error: {error_class}"
            section.expect(isinstance(cause, ModelError),
                           f"run {run_id}: ended by {type(cause).__name__}, not a typed model error")
            section.expect(any(e["type"] == "error" and e["error_class"] == error_class for e in events),
                           f"run {run_id}: its {error_class} is not in its trace")
            section.expect(result.stop_reason == "error" and store.run(run_id)["stop_reason"] == "error",
                           f"run {run_id}: failed, but its stop reason is {result.stop_reason}")
        by_method.setdefault(graph, Counter())[outcome] += 1
        result_retries += result.retries
        run_fallbacks = Counter(e["kind"] for e in events if e["type"] == "fallback")
        fallbacks.update(run_fallbacks)
        run_failed_calls = 0
        for event in events:
            if event["type"] == "retry":
                retry_events += 1
                request = event.get("request", "completion")
                failed_attempts[(request, event["error_class"])] += 1
                worst_attempt = max(worst_attempt, event["attempt"])
                tokenize_expected += request == "tokenize"
                unconnected[request] += _unconnected(event)
            elif event["type"] == "llm_call" and event["source"] == "backend":
                calls += 1
                calls_retried += event["attempts"] > 1
                completion_attempts += event["attempts"]
                section.expect(event["attempts"] <= max_retries + 1,
                               f"run {run_id}: a call made {event['attempts']} attempts")
                if event["params"]["n"] > 1:  # each choice counted by one successful /tokenize
                    tokenize_expected += event["params"]["n"]
            elif event["type"] == "error" and event["attempts"]:
                completion_attempts += event["attempts"]
                unconnected["completion"] += _unconnected(event)
                section.expect(event["attempts"] <= max_retries + 1,
                               f"run {run_id}: a failed call made {event['attempts']} attempts")
                if event["cache_keys"]:  # failed for good (a call cancelled mid-way has no keys)
                    section.expect(event["attempts"] == max_retries + 1,
                                   f"run {run_id}: a call failed for good ({event['error_class']}) after "
                                   f"{event['attempts']} attempts, not after all {max_retries + 1}")
                    calls += 1
                    failed_calls += 1
                    run_failed_calls += 1
                    calls_retried += event["attempts"] > 1
                    failed_attempts[("completion", event["error_class"])] += 1
                else:
                    cancelled_calls += 1
        if cause is None and run_failed_calls:
            survived = sum(v for k, v in run_fallbacks.items() if k in FALLBACKS_FOR_FAILED_CALLS)
            section.expect(survived >= run_failed_calls,
                           f"run {run_id}: finished after {run_failed_calls} failed call(s) with "
                           f"{survived} fallback(s) recorded for them")
    section.runs = len(outcomes)
    section.faults_injected = stats.faults_injected
    section.events_lost = events_lost
    section.expect(worst_attempt <= max_retries, f"a request was retried after its attempt {worst_attempt}")
    section.expect(retry_events == result_retries,
                   f"retry events {retry_events} != the runs' RunResult.retries {result_retries}")
    chat_received = stats.received_by_path.get(CHAT, 0)
    tokenize_received = stats.received_by_path.get(TOKENIZE, 0)
    chat_sent = completion_attempts - unconnected["completion"]
    tokenize_sent = tokenize_expected - unconnected["tokenize"]
    section.expect(chat_received == chat_sent,
                   f"the proxy received {chat_received} completion requests; the traces record "
                   f"{completion_attempts} attempts, {unconnected['completion']} of them never connected")
    section.expect(tokenize_received == tokenize_sent,
                   f"the proxy received {tokenize_received} /tokenize requests; the traces account for "
                   f"{tokenize_expected}, {unconnected['tokenize']} of them never connected")
    estimates = fallbacks["token_count_estimated"]
    tokenize_retries = sum(v for (request, _), v in failed_attempts.items() if request == "tokenize")
    section.expect(tokenize_retries >= estimates * max_retries,
                   f"{estimates} token counts were estimated after {tokenize_retries} /tokenize retries: "
                   f"each should follow {max_retries}")
    share = calls_retried / calls if calls else 0.0
    section.expect(share > 0.5, f"only {share:.0%} of calls needed a retry: the faults did not bite")
    injected_by_class: Counter[str] = Counter()
    for kind, count in stats.faults_by_path.get(CHAT, {}).items():
        if kind.removesuffix("_retry_after") in COMPLETION_ERROR:
            injected_by_class[COMPLETION_ERROR[kind.removesuffix("_retry_after")]] += count
    outcomes_total: Counter[str] = Counter()
    for counts in by_method.values():
        outcomes_total.update(counts)
    section.figures.update({
        "outcomes": dict(outcomes_total), "outcomes_by_method": {k: dict(v) for k, v in by_method.items()},
        "proxy": {"received": stats.received_by_path, "forwarded": stats.forwarded_by_path,
                  "faults": stats.faults_by_path},
        "calls": calls, "calls_retried": calls_retried, "calls_retried_share": round(share, 4),
        "calls_failed": failed_calls, "calls_cancelled": cancelled_calls, "retry_events": retry_events,
        "failed_attempts": {f"{request}:{cls}": v for (request, cls), v in sorted(failed_attempts.items())},
        "completion_faults_by_class": dict(injected_by_class),
        "worst_attempt_retried": worst_attempt, "completion_attempts": completion_attempts,
        "tokenize_requests_accounted": tokenize_expected, "fallbacks": dict(fallbacks),
        "attempts_never_connected": dict(unconnected),
    })


def _lines(section: Section) -> list[str]:
    """The part's report: figures first, then tables of faults, failed attempts and outcomes."""
    f = section.figures
    proxy = f["proxy"]
    received, forwarded = proxy["received"], proxy["forwarded"]
    lines = [
        f"faults: {section.runs} runs at fault rate {f['fault_rate']} (timeout {f['timeout_s']} s, "
        f"max_retries {f['max_retries']}, concurrency {f['concurrency']}) in {section.seconds} s: "
        f"{section.faults_injected} faults injected; {f['calls_retried']} of {f['calls']} calls "
        f"({f['calls_retried_share']:.0%}) needed a retry, {f['calls_failed']} failed for good, "
        f"{f['calls_cancelled']} were cancelled by a sibling's failure; most attempts of a request "
        f"{f['worst_attempt_retried'] + 1}; traces verified {section.traces_verified} "
        f"(failed {section.traces_failed}); events lost {section.events_lost}",
        "",
        f"| fault injected | {CHAT} | {TOKENIZE} |",
        "|---|---:|---:|",
    ]
    chat, tokenize = proxy["faults"].get(CHAT, {}), proxy["faults"].get(TOKENIZE, {})
    for kind in FAULT_KINDS:
        label = kind if kind in FAILING_KINDS else f"{kind} (answer arrives)"
        lines.append(f"| {label} | {chat.get(kind, 0)} | {tokenize.get(kind, 0)} |")
    lines += [f"| requests received | {received.get(CHAT, 0)} | {received.get(TOKENIZE, 0)} |",
              f"| forwarded upstream | {forwarded.get(CHAT, 0)} | {forwarded.get(TOKENIZE, 0)} |",
              f"| attempts in the traces | {f['completion_attempts']} | {f['tokenize_requests_accounted']} |",
              f"| of which never connected | {f['attempts_never_connected'].get('completion', 0)} "
              f"| {f['attempts_never_connected'].get('tokenize', 0)} |",
              "",
              "| error class | completion faults raising it | failed completion attempts | failed /tokenize |",
              "|---|---:|---:|---:|"]
    attempts = f["failed_attempts"]
    classes = sorted({key.split(":", 1)[1] for key in attempts} | set(f["completion_faults_by_class"]))
    for cls in classes:
        lines.append(f"| {cls} | {f['completion_faults_by_class'].get(cls, 0)} | "
                     f"{attempts.get(f'completion:{cls}', 0)} | {attempts.get(f'tokenize:{cls}', 0)} |")
    lines += ["", "| method | runs | outcomes |", "|---|---:|---|"]
    for method, counts in f["outcomes_by_method"].items():
        described = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        lines.append(f"| {method} | {sum(counts.values())} | {described} |")
    if f["fallbacks"]:
        lines += ["", "| fallback | count |", "|---|---:|"]
        lines += [f"| {key} | {value} |" for key, value in sorted(f["fallbacks"].items())]
    return lines  # the problems follow in report.md under "Problems:" (reliability.markdown)
