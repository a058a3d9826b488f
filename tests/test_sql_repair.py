"""SQL repair on execution errors and CSC-SQL's sampled merge, with a scripted model (a test
double) on a small SQLite database the tests build themselves."""

from __future__ import annotations

import json
import sqlite3

import pytest

from refinegraph import Budget, replay, run
from refinegraph.models import ScriptedModel
from refinegraph.trace.verify import verify_run

COUNT = "SELECT COUNT(*) FROM singer"
COUNT_OTHER_SPELLING = "select count(singer_id) from singer"
NAMES = "SELECT name FROM singer"
BROKEN = "SELECT nope FROM singer"
BROKEN_TOO = "SELECT missing_column FROM singer"
MERGE_PROMPT = "Two SQL queries"
REPAIR_PROMPT = "query written for the question below failed"


@pytest.fixture
def db(tmp_path) -> str:
    path = tmp_path / "singers.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, age INTEGER)")
        conn.executemany("INSERT INTO singer VALUES (?, ?, ?)",
                         [(i, f"Singer {i}", 20 + 3 * i) for i in range(1, 7)])
    return str(path)


def scripted(writes: list[str], repairs: list[str] = (), merges: list[str] = ()) -> ScriptedModel:
    """Writer, repairer and merger each answer from their own list, in order."""
    queues = {"write": iter(writes), "repair": iter(repairs), "merge": iter(merges)}

    def respond(messages):
        system = messages[0]["content"]
        role = "merge" if system.startswith(MERGE_PROMPT) else "repair" if REPAIR_PROMPT in system else "write"
        return f"```sql\n{next(queues[role])}\n```"
    return ScriptedModel(respond, name="local")


async def run_sql(graph, db, store, model, **kw):
    return await run(graph, {"question": "How many singers are there?", "db": db}, store=store,
                     models={"local": model}, checkpoint=False, **kw)


async def test_repair_turns_a_failed_query_into_one_that_runs(db, store):
    result = await run_sql("sql-repair", db, store, scripted([BROKEN], repairs=[COUNT]))
    assert result.state["sql"] == COUNT and result.state["rows"] == [[6]] and result.stop_reason == "done"
    (event,) = store.events(result.run_id, types={"repair"})
    assert event["round"] == 1 and event["candidates"] == [0]
    assert event["failed_sql"] == BROKEN and "nope" in event["failed_error"]
    assert event["repaired_sql"] == COUNT and event["error_class"] is None and event["result_key"]
    execs = store.events(result.run_id, types={"sql_exec"})
    assert [e["error_class"] for e in execs] == ["execution", None]  # the writer's, the repair's
    repair_call = store.events(result.run_id, types={"llm_call"})[1]
    prompt = json.dumps(store.get_blob(repair_call["request_blob"]))
    assert BROKEN in prompt and "no such column: nope" in prompt
    assert verify_run(store, result.run_id).ok
    replayed = await replay(result.run_id, store=store)
    assert replayed.decisions_match and replayed.model_calls == 0


@pytest.mark.parametrize("max_repairs", [0, 1, 2, 3])
async def test_repairs_stop_at_max_repairs(db, store, max_repairs):
    model = scripted([BROKEN], repairs=[BROKEN_TOO, BROKEN, BROKEN_TOO, BROKEN])
    result = await run_sql("sql-repair", db, store, model, params={"max_repairs": max_repairs})
    events = store.events(result.run_id, types={"repair"})
    assert [e["round"] for e in events] == list(range(1, max_repairs + 1))
    assert all(e["error_class"] == "execution" for e in events)
    # each round answers the error of the statement before it
    assert [e["failed_sql"] for e in events] == [BROKEN, BROKEN_TOO, BROKEN][:max_repairs]
    assert result.model_calls == 1 + max_repairs
    # from round 2 on, each writes back a statement this candidate already tried
    repeats = {"repair_repeated": max_repairs - 1} if max_repairs > 1 else {}
    assert result.stop_reason == "no_valid_sql" and result.fallbacks == {"no_valid_sql": 1, **repeats}


async def test_repair_before_the_vote_changes_the_winner(db, store):
    """Two candidates share one broken statement: repaired once, both vote for its result."""
    writes = [NAMES, BROKEN, BROKEN]
    plain = await run_sql("sql-sc", db, store, scripted(writes), params={"n": 3})
    assert plain.state["sql"] == NAMES
    result = await run_sql("sql-sc", db, store, scripted(writes, repairs=[COUNT]), params={"n": 3, "repair": True})
    (event,) = store.events(result.run_id, types={"repair"})
    assert event["candidate"] == 1 and event["candidates"] == [1, 2]
    (vote,) = store.events(result.run_id, types={"vote"})
    assert [g["members"] for g in vote["groups"]] == [[1, 2], [0]] and vote["failed"] == []
    assert result.state["sql"] == COUNT and result.model_calls == 2


async def test_repair_is_off_by_default_for_sql_sc(db, store):
    result = await run_sql("sql-sc", db, store, scripted([BROKEN, COUNT]), params={"n": 2})
    assert store.events(result.run_id, types={"repair"}) == [] and result.model_calls == 1


async def test_budget_refusal_during_repair_keeps_the_vote(db, store):
    model = scripted([COUNT, BROKEN], repairs=[NAMES])
    result = await run_sql("sql-sc", db, store, model, params={"n": 2, "repair": True}, budget=Budget(max_calls=1))
    assert result.stop_reason == "budget" and result.state["sql"] == COUNT
    assert store.events(result.run_id, types={"repair"}) == []
    assert (await replay(result.run_id, store=store)).decisions_match


async def test_csc_default_samples_eight_merges_and_votes_on_their_results(db, store):
    merges = [NAMES, COUNT_OTHER_SPELLING, NAMES, COUNT, BROKEN, NAMES, COUNT, BROKEN]
    model = scripted([NAMES, COUNT, COUNT], merges=merges)
    result = await run_sql("csc-sql", db, store, model, params={"n": 3})
    calls = store.events(result.run_id, types={"llm_call"})
    assert calls[1]["params"]["n"] == 8 and calls[1]["params"]["temperature"] == 0.8
    (merge,) = store.events(result.run_id, types={"merge"})
    assert merge["mode"] == "vote" and len(merge["revisions"]) == 8
    # 3 revisions return the names, 3 the count (a tie), 2 fail: the tie goes to A's result (the count)
    assert [g["members"] for g in merge["groups"]] == [[0, 2, 5], [1, 3, 6]]
    assert merge["accepted"] and result.state["sql"] == COUNT_OTHER_SPELLING and result.state["rows"] == [[6]]
    assert [r["error_class"] for r in merge["revisions"]].count("execution") == 2
    assert len(store.events(result.run_id, types={"sql_exec"})) == 3 + 4  # each distinct revision runs once


async def test_csc_merge_vote_majority_beats_the_vote_winner(db, store):
    merges = [NAMES] * 5 + [COUNT] * 3
    result = await run_sql("csc-sql", db, store, scripted([COUNT, COUNT, NAMES], merges=merges), params={"n": 3})
    (merge,) = store.events(result.run_id, types={"merge"})
    assert [g["votes"] for g in merge["groups"]] == [5, 3] and result.state["sql"] == NAMES


async def test_csc_single_merge_is_one_revision_at_temperature_zero(db, store):
    model = scripted([NAMES, COUNT, COUNT], merges=[COUNT_OTHER_SPELLING])
    result = await run_sql("csc-sql", db, store, model, params={"n": 3, "merge_mode": "single"})
    calls = store.events(result.run_id, types={"llm_call"})
    assert calls[1]["params"]["n"] == 1 and calls[1]["params"]["temperature"] == 0.0
    (merge,) = store.events(result.run_id, types={"merge"})
    assert merge["mode"] == "single" and merge["accepted"] and result.state["sql"] == COUNT_OTHER_SPELLING


async def test_csc_all_merges_failing_keeps_the_vote_winner(db, store):
    model = scripted([NAMES, COUNT, COUNT], merges=[BROKEN] * 4, repairs=[])
    result = await run_sql("csc-sql", db, store, model, params={"n": 3, "merge_n": 4})
    (merge,) = store.events(result.run_id, types={"merge"})
    assert not merge["accepted"] and merge["groups"] == []
    assert result.fallbacks == {"merge_failed": 1} and result.state["sql"] == COUNT


async def test_csc_with_repair_repairs_before_voting_then_merges(db, store):
    model = scripted([NAMES, BROKEN, COUNT], repairs=[COUNT], merges=[COUNT] * 8)
    result = await run_sql("csc-sql", db, store, model, params={"n": 3, "repair": True})
    (vote,) = store.events(result.run_id, types={"vote"})
    assert [g["members"] for g in vote["groups"]] == [[1, 2], [0]]
    assert len(store.events(result.run_id, types={"repair"})) == 1
    assert result.state["rows"] == [[6]]
    assert (await replay(result.run_id, store=store)).model_calls == 0


async def test_the_repair_prompt_lists_the_failed_querys_tables_with_their_columns(db, store):
    """The live run on Spider (car_1) repeated `T2.MakeId` for two rounds with the whole
    schema in the prompt: the failed query's own tables, alias by alias, are put under the error."""
    aliased = "SELECT T1.nope FROM singer AS T1"
    result = await run_sql("sql-repair", db, store, scripted([aliased], repairs=[COUNT]))
    repair_call = store.events(result.run_id, types={"llm_call"})[1]
    prompt = store.get_blob(repair_call["request_blob"])
    user = prompt["messages"][-1]["content"] if isinstance(prompt, dict) else json.dumps(prompt)
    assert "The tables this query names, with their columns:\nT1 = singer: singer_id, name, age" in user


async def test_a_repair_that_writes_back_a_tried_statement_samples_warmer_next(db, store):
    result = await run_sql("sql-repair", db, store, scripted([BROKEN], repairs=[BROKEN, COUNT]))
    assert result.state["sql"] == COUNT
    first, second = store.events(result.run_id, types={"repair"})
    assert (first["repeated"], first["temperature"]) == (True, 0.0)
    assert (second["repeated"], second["temperature"]) == (False, 0.7)
    assert result.fallbacks.get("repair_repeated") == 1
    calls = store.events(result.run_id, types={"llm_call"})
    assert [c.get("temperature") for c in calls[1:]] in ([0.0, 0.7], [None, None])
