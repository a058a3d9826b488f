"""Typed trace events: one pydantic discriminated union, written as the run happens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Event(BaseModel):
    """Fields every event carries; `seq` and `ts` are set by the trace writer."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = ""
    seq: int = -1
    ts: str = ""
    node: str | None = None


class RunStarted(Event):
    type: Literal["run_started"] = "run_started"
    graph: str
    input: dict[str, Any]
    params: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    roles: dict[str, str] = Field(default_factory=dict)
    budget: dict[str, Any] = Field(default_factory=dict)
    replay_of: str | None = None
    conversation_blob: str | None = None
    """The client's whole chat, when the input is one (a blob: it can be long)."""
    tools_blob: str | None = None
    """The tools the client offered with it (refinegraph.tool_calls.ToolOffer), as a blob."""
    version: str = ""


class RunResumed(Event):
    type: Literal["run_resumed"] = "run_resumed"
    recorded_calls: int
    from_checkpoint: bool = True
    """False: the run had stopped before its first step was checkpointed (no node had
    started), so it starts again from its recorded input under the same id."""
    superseded: list[int] = Field(default_factory=list)
    """The node executions (their node_started seqs) this resume runs again: every one
    recorded before it (a resume re-runs the graph from its input, each recorded model call
    served from the trace). Their events stay in the chain; their decisions are not the
    run's (refinegraph.runner.decisions)."""


class RunInterrupted(Event):
    """The run was stopped before its end (SIGINT, SIGTERM, a cancelled task, a client that
    went away); it stays unsealed, listed as `interrupted`, and `refinegraph resume` finishes it."""

    type: Literal["run_interrupted"] = "run_interrupted"
    reason: str


class NodeStarted(Event):
    type: Literal["node_started"] = "node_started"


class NodeFinished(Event):
    type: Literal["node_finished"] = "node_finished"
    duration_ms: float
    outcome: Literal["ok", "error"] = "ok"


class LLMCall(Event):
    """One model call: request and response live in content-addressed blobs."""

    type: Literal["llm_call"] = "llm_call"
    model: str
    role: str
    backend: str
    source: Literal["backend", "cache"]
    params: dict[str, Any]
    call_key: str
    occurrence: int = 0
    cache_keys: list[str]
    request_blob: str
    response_blob: str
    requests: int = 1
    attempts: int = 1
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    choice_tokens: list[int] = Field(default_factory=list)
    server_usage: list[dict[str, Any]] = Field(default_factory=list)
    finish_reasons: list[str | None] = Field(default_factory=list)
    latency_ms: float = 0.0
    cost_usd: float | None = None
    max_tokens_capped: bool = False


class ToolCallEvent(Event):
    """One tool call a model answered with (a sample of an `llm_call`, served or replayed):
    the client's agent runs it if the run returns it. `key` is what votes compare."""

    type: Literal["tool_call"] = "tool_call"
    model: str
    role: str
    call_key: str
    """The llm_call's call key (with occurrence and sample, which reply this call is of)."""
    occurrence: int = 0
    sample: int
    position: int
    """Its place among the reply's parallel calls."""
    id: str = ""
    name: str
    arguments: str
    arguments_valid: bool
    """Whether the arguments parse as JSON."""
    offered: bool
    """Whether the client offered a tool of that name."""
    key: str
    """The whole reply's vote key (tools.answers "tool_call": its calls normalised)."""


class Retry(Event):
    type: Literal["retry"] = "retry"
    model: str
    attempt: int
    """The attempt that failed (1 = the first try); at most the policy's max_retries."""
    error_class: str
    message: str
    wait_s: float
    request: str = "completion"
    """Which request of the call failed: the completion, or a backend's own follow-up
    ("tokenize": llama.cpp's token count, retried without re-sending the completion)."""


class Critique(Event):
    """A critic's structured verdict on one candidate."""

    type: Literal["critique"] = "critique"
    candidate: int
    score: float | None
    done: bool
    criteria: dict[str, float] = Field(default_factory=dict)
    edits: list[str] = Field(default_factory=list)
    parsed_with: Literal["json_schema", "tolerant", "fallback"]


class Verdict(Event):
    type: Literal["verdict"] = "verdict"
    subject: str
    correct: bool | None
    reason: str = ""


class Refine(Event):
    type: Literal["refine"] = "refine"
    iteration: int
    from_candidate: int
    to_candidate: int


class Fallback(Event):
    """Something did not go the normal way and a documented substitute was used."""

    type: Literal["fallback"] = "fallback"
    kind: str
    reason: str
    detail: str = ""


class BudgetEvent(Event):
    type: Literal["budget"] = "budget"
    reason: str
    spent: dict[str, Any]
    limits: dict[str, Any]
    elapsed_s: float = 0.0
    """Wall time at the refusal: reported, but not part of the decision (no replay has it)."""


class ErrorEvent(Event):
    type: Literal["error"] = "error"
    error_class: str
    message: str
    cache_keys: list[str] = Field(default_factory=list)
    """For a model call that failed for good: its sample keys, so a replay fails it alike."""
    attempts: int = 0


class Stop(Event):
    type: Literal["stop"] = "stop"
    reason: str
    chosen: int | None = None
    score: float | None = None


class RunFinished(Event):
    type: Literal["run_finished"] = "run_finished"
    answer: str | None
    stop_reason: str
    usage: dict[str, Any]
    model_calls: int
    cache_hits: int


class SqlExec(Event):
    """One SQL statement run on the database: what it returned, or why it did not."""

    type: Literal["sql_exec"] = "sql_exec"
    candidate: int
    sql: str
    result_key: str | None = None
    rows: int = 0
    truncated: bool = False
    error_class: str | None = None
    error: str | None = None
    elapsed_ms: float = 0.0


class CodeExec(Event):
    """One program run in the code sandbox (tools.code): how it ended and why, never an exception."""

    type: Literal["code_exec"] = "code_exec"
    candidate: int
    status: Literal["ok", "error", "timeout", "memory", "output_limit", "killed", "sandbox_unavailable"]
    passed: bool
    """Whether the candidate passed its tests (exit 0 and the end-of-tests marker printed)."""
    isolation: Literal["bwrap", "rlimits", "none"]
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""
    program_blob: str = ""
    program_digest: str = ""
    stdout: str = ""
    """The first 2000 characters; the digest covers all that was captured."""
    stderr: str = ""
    """The last 2000 characters (where a traceback ends)."""
    stdout_digest: str = ""
    stderr_digest: str = ""
    truncated: bool = False
    elapsed_ms: float = 0.0


class Vote(Event):
    """A vote: groups of equivalent answers with their members, the winner and agreement."""

    type: Literal["vote"] = "vote"
    groups: list[dict[str, Any]]
    failed: list[int] = Field(default_factory=list)
    winner: str | None
    agreement: float
    tie: bool = False


class Merge(Event):
    """A merge-revise step: the two SQL it read and the SQL it wrote, and whether that held."""

    type: Literal["merge"] = "merge"
    inputs: list[dict[str, Any]]
    output_sql: str
    output_key: str | None = None
    accepted: bool
    reason: str = ""
    mode: Literal["single", "vote"] = "single"
    """"single": one revision at temperature 0; "vote": several sampled revisions, executed,
    voted on by result (CSC-SQL's released code)."""
    temperature: float = 0.0
    revisions: list[dict[str, Any]] = Field(default_factory=list)
    """Each revision's SQL, result key (None: it failed) and error class, in sample order."""
    groups: list[dict[str, Any]] = Field(default_factory=list)
    """The vote over the revisions' results: members (revision indices) and votes."""


class Repair(Event):
    """One SQL repair round: the failed statement, the error it answered, and what the
    writer wrote back (executed: `error_class` None when it now runs)."""

    type: Literal["repair"] = "repair"
    candidate: int
    candidates: list[int] = Field(default_factory=list)
    """Every candidate that had this same failed statement (repaired once, shared)."""
    round: int
    failed_sql: str
    failed_error_class: str
    failed_error: str
    repaired_sql: str
    error_class: str | None = None
    error: str | None = None
    temperature: float = 0.0
    """The round's sampling temperature (above 0 after a round that repeated a tried statement)."""
    repeated: bool = False
    """The writer wrote back a statement this candidate had already tried."""
    result_key: str | None = None


class Expand(Event):
    """Step-level search: one partial solution extended by one step into its children."""

    type: Literal["expand"] = "expand"
    iteration: int
    parent: int
    """The partial solution expanded (0: the empty solution)."""
    children: list[int]
    steps: list[str]
    """Each child's new step (the first 2000 characters)."""
    complete: list[bool]
    """Whether each child ended the solution (a final answer, or nothing more to say)."""


class Prune(Event):
    """Step-level search: which partial solutions go on after an iteration's scores."""

    type: Literal["prune"] = "prune"
    iteration: int
    algorithm: Literal["beam-search", "dvts", "particle-filter"]
    rule: Literal["top_k", "best_per_subtree", "resample"]
    scores: dict[str, float | None]
    """Each scored partial solution's step reward, by its id (None: unscored)."""
    kept: list[int]
    """The partial solutions expanded next (particle filter: each new particle's parent, in order)."""
    pruned: list[int] = Field(default_factory=list)
    finished: list[int] = Field(default_factory=list)
    """Complete solutions set aside for the final selection."""
    weights: list[float] = Field(default_factory=list)
    """Particle filter: the resampling probability of each particle, in particle order."""


class SamplingCheck(Event):
    """After each batch of an adaptive sampler: the counts so far and whether to stop."""

    type: Literal["sampling_check"] = "sampling_check"
    samples: int
    counts: list[int]
    leader: str | None
    rule: str
    posterior: float | None = None
    threshold: float | None = None
    stop: bool
    reason: str = ""


class Score(Event):
    """A reward score of one candidate: its outcome and, where scored, each step."""

    type: Literal["score"] = "score"
    candidate: int
    outcome: float | None
    steps: list[float] = Field(default_factory=list)
    scorer: str
    parsed_with: str = ""


class Difficulty(Event):
    """MAgICoRe's easy/hard decision and the two signals it rests on."""

    type: Literal["difficulty"] = "difficulty"
    label: Literal["easy", "hard"]
    iteration: int = 0
    majority_reward: float | None
    confidence: float
    thresholds: dict[str, float]


class Judge(Event):
    """A judge choosing among candidate answers."""

    type: Literal["judge"] = "judge"
    options: list[str]
    chosen: str | None
    reason: str = ""
    parsed_with: str = ""


class Route(Event):
    """ACAR's routing: probes, their answers, sigma and the mode (phase "decided"); then
    the same with the models' answers, cost and winner (phase "final")."""

    type: Literal["route"] = "route"
    phase: Literal["decided", "final"]
    probe_model: str
    probes: int
    probe_answers: list[str | None]
    sigma: float
    thresholds: list[float]
    probe_temperature: float
    probe_seed: int | None
    mode: Literal["one", "two", "three"]
    models: list[str]
    model_answers: dict[str, str | None] = Field(default_factory=dict)
    tokens: int = 0
    cost_usd: float | None = None
    winner: str | None = None


class Approval(Event):
    """A person's approval of the SQL a graph chose, before it runs (graphs.sql with
    approve=True): phase "requested" shows the statement; phase "decided" says what was
    decided, by whom and through what, and whether a statement will run (an edit passes
    the SQL guard first)."""

    type: Literal["approval"] = "approval"
    phase: Literal["requested", "decided"]
    sql: str
    """The statement the graph chose."""
    decision: Literal["approve", "refuse", "edit"] | None = None
    by: str | None = None
    via: str | None = None
    """Where the decision came from: "cli", "api" or "server"."""
    edited_sql: str | None = None
    accepted: bool | None = None
    """Whether a statement runs: approved, or an edit the guard let through."""
    reason: str = ""


AnyEvent = Annotated[
    RunStarted | RunResumed | RunInterrupted | NodeStarted | NodeFinished | LLMCall | ToolCallEvent | Retry
    | Critique | Verdict
    | Refine | Fallback | BudgetEvent | ErrorEvent | Stop | RunFinished | SqlExec | Vote | Merge
    | SamplingCheck | Score | Difficulty | Judge | Route | CodeExec | Approval | Repair | Expand | Prune,
    Field(discriminator="type"),
]
"""The built-in events. A trace is read with `parse_event`, which also knows the ones added
by `register_event`."""
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyEvent)

DECISION_TYPES: set[str] = {"critique", "verdict", "refine", "fallback", "budget", "stop", "sql_exec", "vote",
                            "merge", "repair", "expand", "prune", "sampling_check", "score", "difficulty", "judge",
                            "route", "code_exec", "approval"}
"""Event types that record a decision: what `refinegraph.runner.decisions` compares between a
run and its replay (a set that register_event adds to)."""

_registered: dict[str, type[Event]] = {}


def register_event(cls: type[Event], *, decision: bool = True) -> type[Event]:
    """Add an event type (a subclass of Event with a `type: Literal["..."]` field) that a
    graph emits; `decision=True` counts it among the decisions a replay must reproduce.
    Usable as a class decorator. A name already used by another event is refused."""
    global EVENT_ADAPTER
    field = cls.model_fields.get("type")
    name = field.default if field is not None else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a field type: Literal[\"name\"] = \"name\"")
    builtin = {member.model_fields["type"].default for member in AnyEvent.__origin__.__args__}
    if name in builtin or (name in _registered and _registered[name] is not cls):
        raise ValueError(f"event type {name!r} is taken")
    _registered[name] = cls
    union = AnyEvent.__origin__ | _union(list(_registered.values()))
    EVENT_ADAPTER = TypeAdapter(Annotated[union, Field(discriminator="type")])
    if decision:
        DECISION_TYPES.add(name)
    return cls


def _union(classes: list[type[Event]]) -> Any:
    combined: Any = classes[0]
    for cls in classes[1:]:
        combined = combined | cls
    return combined


def parse_event(data: dict[str, Any]) -> Event:
    return EVENT_ADAPTER.validate_python(data)
