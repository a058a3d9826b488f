"""Human approval of text-to-SQL (approve=True): the graph waits through LangGraph's interrupt(),
and a person approves, refuses or edits the SQL, through the Python API, the CLI and the server.

The model is a scripted test double that writes a fixed query.
"""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from typer.testing import CliRunner

from refinegraph import approval, replay, run
from refinegraph.approval import Decision, DecisionRefused, NotAwaitingApproval
from refinegraph.cli.app import app as cli_app
from refinegraph.config import Config
from refinegraph.models import ScriptedModel
from refinegraph.trace.verify import verify_run

COUNT = "SELECT COUNT(*) FROM items"
NAMES = "SELECT name FROM items ORDER BY name"
QUESTION = "How many items are there?"


@pytest.fixture
def db(tmp_path) -> str:
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (name TEXT)")
        conn.executemany("INSERT INTO items VALUES (?)", [("a",), ("b",), ("c",)])
    return str(path)


def writes(sql: str = COUNT) -> ScriptedModel:
    return ScriptedModel(lambda messages: f"```sql\n{sql}\n```", name="local")


def item_count(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]


async def paused(db, store, graph="sql-greedy", **params):
    result = await approval.start(graph, {"question": QUESTION, "db": db}, store=store,
                                  models={"local": writes()}, params=params)
    waiting = approval.pending(result)
    assert waiting is not None and waiting.sql == COUNT, result
    return result


async def decide(store, run_id, **decision):
    return await approval.decide(run_id, decision, store=store, models={"local": writes()})


def decided_event(store, run_id):
    (event,) = [e for e in store.events(run_id, types={"approval"}) if e["phase"] == "decided"]
    return event


# -- the Python API ---------------------------------------------------------------------------


async def test_a_run_waits_with_its_sql_unexecuted_and_is_listed_as_awaiting(db, store):
    result = await paused(db, store)
    assert result.stop_reason == "awaiting_approval" and result.answer is None
    row = store.run(result.run_id)
    assert row["status"] == "awaiting_approval" and row["owner"] is None and row["sealed_hash"] is None
    assert store.events(result.run_id, types={"sql_exec", "run_finished"}) == []  # nothing ran yet
    (request,) = store.events(result.run_id, types={"approval"})
    assert request["phase"] == "requested" and request["sql"] == COUNT
    assert approval.pending_run(result.run_id[:8], store=store).sql == COUNT
    assert verify_run(store, result.run_id).ok
    listed = CliRunner().invoke(cli_app, ["trace", "list", "--json"])
    assert [r["status"] for r in json.loads(listed.stdout) if r["run_id"] == result.run_id] == ["awaiting_approval"]


async def test_approve_runs_the_sql_and_records_who(db, store):
    result = await paused(db, store)
    done = await decide(store, result.run_id, decision="approve", by="ana")
    assert done.stop_reason == "done" and done.state["sql"] == COUNT and done.state["rows"] == [[3]]
    event = decided_event(store, result.run_id)
    assert (event["decision"], event["by"], event["via"], event["accepted"]) == ("approve", "ana", "api", True)
    assert store.run(result.run_id)["status"] == "finished" and verify_run(store, result.run_id).ok
    assert done.model_calls == 1  # the writer's call, not paid again
    (execution,) = store.events(result.run_id, types={"sql_exec"})  # run once, after the decision
    assert execution["sql"] == COUNT and execution["seq"] > event["seq"]
    with pytest.raises(NotAwaitingApproval, match="not awaiting"):
        await decide(store, result.run_id, decision="refuse", by="bo")


async def test_refuse_runs_nothing(db, store):
    result = await paused(db, store)
    done = await decide(store, result.run_id, decision="refuse", by="ana")
    assert done.stop_reason == "refused_by_human" and done.answer is None
    assert done.state["sql"] is None and done.state["refused_sql"] == COUNT and done.state["rows"] == []
    event = decided_event(store, result.run_id)
    assert (event["decision"], event["accepted"]) == ("refuse", False)
    (stop,) = store.events(result.run_id, types={"stop"})
    assert stop["reason"] == "refused_by_human" and verify_run(store, result.run_id).ok


async def test_an_edit_runs_the_edited_sql(db, store):
    result = await paused(db, store)
    done = await decide(store, result.run_id, decision="edit", sql=NAMES, by="ana")
    assert done.stop_reason == "done" and done.state["sql"] == NAMES
    assert done.state["rows"] == [["a"], ["b"], ["c"]]
    event = decided_event(store, result.run_id)
    assert (event["decision"], event["sql"], event["edited_sql"], event["accepted"]) == ("edit", COUNT, NAMES, True)


async def test_an_edit_that_fails_on_the_database_is_no_answer(db, store):
    result = await paused(db, store)
    done = await decide(store, result.run_id, decision="edit", sql="SELECT nope FROM items", by="ana")
    assert done.stop_reason == "no_valid_sql" and done.answer is None and done.fallbacks == {"no_valid_sql": 1}
    (execution,) = store.events(result.run_id, types={"sql_exec"})
    assert execution["error_class"] == "execution"


@pytest.mark.parametrize("edit", ["DELETE FROM items", "SELECT 1; DROP TABLE items", "ATTACH 'x.db' AS x"])
async def test_an_edit_the_guard_refuses_is_refused(db, store, edit):
    result = await paused(db, store)
    done = await decide(store, result.run_id, decision="edit", sql=edit, by="ana")
    assert done.stop_reason == "edit_refused" and done.state["sql"] is None
    assert done.state["refused_sql"] == edit and "guard refused" in done.state["error"]
    event = decided_event(store, result.run_id)
    assert event["accepted"] is False and "guard refused" in event["reason"]
    assert item_count(db) == 3


async def test_a_malformed_decision_changes_nothing(db, store):
    result = await paused(db, store)
    for bad in ({"decision": "edit", "by": "ana"}, {"decision": "maybe"}, {"decision": "approve", "sql": COUNT}):
        with pytest.raises(DecisionRefused):
            await decide(store, result.run_id, **bad)
    assert store.run(result.run_id)["status"] == "awaiting_approval"
    done = await decide(store, result.run_id, decision="approve", by="ana")
    assert done.state["rows"] == [[3]]


async def test_the_vote_graphs_wait_after_their_vote(db, store):
    result = await paused(db, store, graph="sql-sc", n=2)
    assert len(store.events(result.run_id, types={"sql_exec"})) == 2  # the vote needs execution results
    assert len(store.events(result.run_id, types={"vote"})) == 1
    done = await decide(store, result.run_id, decision="approve", by="ana")
    assert done.state["rows"] == [[3]]
    executions = store.events(result.run_id, types={"sql_exec"})
    assert len(executions) == 3 and executions[-1]["node"] == "run_approved"


async def test_a_vote_graph_edit_that_fails_on_the_database_is_no_answer(db, store):
    result = await paused(db, store, graph="csc-sql", n=2)
    done = await decide(store, result.run_id, decision="edit", sql="SELECT nope FROM items", by="ana")
    assert done.stop_reason == "no_valid_sql" and done.answer is None and done.state["rows"] == []


@pytest.mark.parametrize("graph, sql", [("sql-sc", "SELECT nope FROM items"), ("sql-greedy", "   ")])
async def test_nothing_to_approve_asks_nobody(db, store, graph, sql):
    result = await approval.start(graph, {"question": QUESTION, "db": db}, store=store,
                                  models={"local": writes(sql)}, params={"n": 1})
    assert approval.pending(result) is None and result.stop_reason == "no_valid_sql"
    assert store.events(result.run_id, types={"approval"}) == [] and store.run(result.run_id)["status"] == "finished"
    # the failed candidate is not sent to the database again (sql-greedy's was never sent)
    assert len(store.events(result.run_id, types={"sql_exec"})) == (1 if graph == "sql-sc" else 0)


async def test_a_budget_stop_before_any_sql_asks_nobody(db, store):
    from refinegraph.budget import Budget
    result = await approval.start("sql-greedy", {"question": QUESTION, "db": db}, store=store,
                                  models={"local": writes()}, budget=Budget(max_calls=0))
    assert approval.pending(result) is None and result.stop_reason == "budget"
    assert store.events(result.run_id, types={"approval", "sql_exec"}) == []


async def test_a_replay_reaches_the_same_decisions_without_a_person(db, store):
    result = await paused(db, store)
    await decide(store, result.run_id, decision="edit", sql=NAMES, by="ana")
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match
    assert replayed.answer_matches and replayed.stop_reason == "done"
    assert decided_event(store, replayed.run_id)["edited_sql"] == NAMES


async def test_waiting_without_a_checkpointer_is_a_clear_error(db, store):
    from refinegraph.runner import RunFailed
    with pytest.raises(RunFailed, match="checkpoint=True"):
        await run("sql-greedy", {"question": QUESTION, "db": db}, store=store, models={"local": writes()},
                  params={"approve": True}, checkpoint=False)


def test_decision_model():
    assert Decision(decision="edit", sql=NAMES).by == "unknown"
    with pytest.raises(ValueError, match="edited statement"):
        Decision(decision="edit", sql="  ")


# -- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_double(monkeypatch):
    """The CLI's runs and decisions get the scripted model."""
    real_start, real_decide = approval.start, approval.decide

    async def start(*args, **kw):
        return await real_start(*args, **kw, models={"local": writes()})

    async def decide(*args, **kw):
        return await real_decide(*args, **kw, models={"local": writes()})

    monkeypatch.setattr(approval, "start", start)
    monkeypatch.setattr(approval, "decide", decide)


def sql_cli(db, stdin, *extra):
    return CliRunner().invoke(cli_app, ["sql", QUESTION, "--db", db, "--graph", "sql-greedy", "--approve",
                                        "--by", "ana", *extra], input=stdin)


def last_run(store):
    (row,) = store.runs(1)
    return row, decided_event(store, row["run_id"]) if row["status"] != "awaiting_approval" else None


def test_cli_yes_runs_the_sql(db, cli_double, store):
    out = sql_cli(db, "y\n")
    assert out.exit_code == 0, out.output
    assert COUNT in out.stderr and "[y]es, [n]o" in out.stderr and "3" in out.stdout
    row, event = last_run(store)
    assert row["status"] == "finished" and (event["decision"], event["by"], event["via"]) == ("approve", "ana", "cli")


def test_cli_no_refuses(db, cli_double, store):
    out = sql_cli(db, "n\n", "--json")
    assert out.exit_code == 1, out.output
    data = json.loads(out.stdout)
    assert data["sql"] is None and data["refused_sql"] == COUNT and data["stop_reason"] == "refused_by_human"
    assert last_run(store)[1]["decision"] == "refuse"


def test_cli_an_edited_statement(db, cli_double, store):
    out = sql_cli(db, f"{NAMES}\n", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["rows"] == [["a"], ["b"], ["c"]]
    refused = sql_cli(db, "DELETE FROM items\n", "--json")
    assert refused.exit_code == 1 and json.loads(refused.stdout)["stop_reason"] == "edit_refused"
    assert item_count(db) == 3


def test_cli_no_answer_leaves_the_run_waiting_for_refinegraph_approve(db, cli_double, store):
    out = sql_cli(db, "", "--json")
    assert out.exit_code == 3, out.output
    assert json.loads(out.stdout)["pending"]["sql"] == COUNT
    row, _ = last_run(store)
    assert row["status"] == "awaiting_approval" and f"refinegraph approve {row['run_id']}" in out.stderr
    bad = CliRunner().invoke(cli_app, ["approve", row["run_id"], "--edit", ""])
    assert bad.exit_code == 2 and "edited statement" in bad.stderr
    done = CliRunner().invoke(cli_app, ["approve", row["run_id"], "--yes", "--by", "bo", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["rows"] == [[3]] and last_run(store)[1]["by"] == "bo"
    again = CliRunner().invoke(cli_app, ["approve", row["run_id"], "--no"])
    assert again.exit_code == 2 and "not awaiting approval" in again.stderr


# -- the server ---------------------------------------------------------------------------------


def server_app(db, store):
    from refinegraph.server import create_app
    cfg = Config.model_validate({"pipelines": {"shop": {"graph": "sql-greedy", "db": db, "params": {"approve": True}}},
                                 "server": {"checkpoint": False}})
    return create_app(cfg, models={"local": writes()}, store=store)


async def test_server_run_waits_then_a_follow_up_decides(db, store):
    app = server_app(db, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rg.test") as http:
        reply = await http.post("/v1/chat/completions",
                                json={"model": "shop", "messages": [{"role": "user", "content": QUESTION}]})
        assert reply.status_code == 200, reply.text
        meta = reply.json()["refinegraph"]
        assert meta["stop_reason"] == "awaiting_approval" and meta["pending"]["sql"] == COUNT
        run_id = meta["run_id"]
        shown = await http.get(f"/v1/runs/{run_id}/approval")
        assert shown.status_code == 200 and shown.json()["sql"] == COUNT
        bad = await http.post(f"/v1/runs/{run_id}/approval", json={"decision": "edit"})
        assert bad.status_code == 400 and "edited statement" in bad.json()["error"]["message"]
        done = await http.post(f"/v1/runs/{run_id}/approval", json={"decision": "approve", "by": "ana"})
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["stop_reason"] == "done" and body["sql"] == COUNT and body["rows"] == [[3]]
        assert "3" in body["answer"]
        again = await http.post(f"/v1/runs/{run_id}/approval", json={"decision": "refuse"})
        assert again.status_code == 409
        missing = await http.get("/v1/runs/nosuchrun/approval")
        assert missing.status_code == 404
    event = decided_event(store, run_id)
    assert (event["decision"], event["by"], event["via"]) == ("approve", "ana", "server")


@pytest.mark.parametrize("decision, stop", [({"decision": "refuse"}, "refused_by_human"),
                                            ({"decision": "edit", "sql": "DELETE FROM items"}, "edit_refused"),
                                            ({"decision": "edit", "sql": NAMES}, "done")])
async def test_server_refuse_and_edit(db, store, decision, stop):
    app = server_app(db, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rg.test") as http:
        reply = await http.post("/v1/chat/completions",
                                json={"model": "shop", "messages": [{"role": "user", "content": QUESTION}]})
        run_id = reply.json()["refinegraph"]["run_id"]
        done = await http.post(f"/v1/runs/{run_id}/approval", json={**decision, "by": "ana"})
    body = done.json()
    assert done.status_code == 200 and body["stop_reason"] == stop, body
    if stop == "done":
        assert body["rows"] == [["a"], ["b"], ["c"]]
    else:
        assert body["sql"] is None and body["refused_sql"] and body["error"]
    assert item_count(db) == 3



async def test_server_a_request_cannot_turn_approval_off(db, store):
    app = server_app(db, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rg.test") as http:
        reply = await http.post("/v1/chat/completions", json={
            "model": "shop", "messages": [{"role": "user", "content": QUESTION}],
            "refinegraph": {"params": {"approve": False}}})
    assert reply.status_code == 400 and "cannot turn that off" in reply.json()["error"]["message"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rg.test") as http:
        streamed = await http.post("/v1/chat/completions", json={
            "model": "shop", "messages": [{"role": "user", "content": QUESTION}], "stream": True})
    assert streamed.status_code == 400 and "stream" in streamed.json()["error"]["message"]
    assert store.runs() == []


async def test_of_two_concurrent_decisions_one_wins(db, store):
    import asyncio
    result = await paused(db, store)
    outcomes = await asyncio.gather(decide(store, result.run_id, decision="approve", by="ana"),
                                    decide(store, result.run_id, decision="refuse", by="bo"),
                                    return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, NotAwaitingApproval)]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(refused) == 1 and len(done) == 1, outcomes
    assert len([e for e in store.events(result.run_id, types={"approval"}) if e["phase"] == "decided"]) == 1
    assert verify_run(store, result.run_id).ok
