"""The real embedded model, Qwen2.5-Coder-1.5B-Instruct on llama.cpp: `pytest -m qwen`.

Out of the default run (minutes on a CPU, and it needs the model's parts:
`pip install ".[qwen]"`); it skips, saying so, where the parts (or DuckDB, psycopg, a
PostgreSQL server) are missing, and fails instead where REFINEGRAPH_QWEN_REQUIRED=1
(`.ci/run` sets it: CI must run the whole suite).
"""

from __future__ import annotations

import os

import pytest
from test_sql_engines import pg_reader

from refinegraph import run
from refinegraph.context import RunContext
from refinegraph.data import sample_db
from refinegraph.models import LocalModel
from refinegraph.models.packaged import QWEN_CODER_15B, install_command, is_installed
from refinegraph.trace.store import TraceWriter
from refinegraph.trace.verify import verify_run

from conftest import require_pg

pytestmark = [pytest.mark.qwen, pytest.mark.local]


def required(check, *args):
    """`check(*args)` (a skip helper such as importorskip), its skip a failure where CI
    requires the whole suite to run."""
    try:
        return check(*args)
    except pytest.skip.Exception as skipped:
        if os.environ.get("REFINEGRAPH_QWEN_REQUIRED") == "1":
            pytest.fail(f"required to run, but: {skipped}")
        raise


def _installed() -> None:
    if not is_installed(QWEN_CODER_15B):
        pytest.skip(f"Qwen2.5-Coder-1.5B is not installed: {install_command(QWEN_CODER_15B)}")


@pytest.fixture(scope="module")
def qwen():
    required(_installed)
    return LocalModel("local", model="qwen2.5-coder-1.5b", n_parallel=4)


async def test_sql_repair_answers_the_quick_start_question(store, qwen):
    task = {"question": "Which three products sold the most units in orders that were not cancelled?",
            "db": str(sample_db())}
    result = await run("sql-repair", task, store=store, models={"local": qwen})
    rows, sql = result.state.get("rows") or [], result.state.get("sql")
    assert rows, f"no rows: stop {result.stop_reason}, sql {sql!r}, fallbacks {result.fallbacks}"
    assert {row[0] for row in rows[:3]} == {"Pour-over kettle", "Filter beans 500g", "Earl Grey 250g"}, sql
    assert verify_run(store, result.run_id).ok


@pytest.fixture(params=["duckdb", "postgres"])
def shop_elsewhere(request, tmp_path):
    """The sample shop database copied into DuckDB or a PostgreSQL schema of its own."""
    from refinegraph.tools.sql.copies import build_duckdb, build_pg_schema, drop_pg_schema, unique_schema

    if request.param == "duckdb":
        required(pytest.importorskip, "duckdb")
        yield f"duckdb:///{build_duckdb(sample_db(), tmp_path / 'shop.duckdb')}"
        return
    required(pytest.importorskip, "psycopg")
    dsn = required(require_pg)
    schema = unique_schema("rg_qwen_shop")
    build_pg_schema(dsn, schema, sample_db())
    try:
        with pg_reader(dsn, schema) as url:  # model SQL runs only as a read-only role
            yield url
    finally:
        drop_pg_schema(dsn, schema)


async def test_the_quick_start_question_on_duckdb_and_postgres(store, qwen, shop_elsewhere):
    """The same question on the other two engines: the schema prompt names the engine, and
    the model's SQL runs read-only there."""
    task = {"question": "Which three products sold the most units in orders that were not cancelled?",
            "db": shop_elsewhere}
    result = await run("sql-repair", task, store=store, models={"local": qwen})
    rows, sql = result.state.get("rows") or [], result.state.get("sql")
    assert rows, f"no rows: stop {result.stop_reason}, sql {sql!r}, fallbacks {result.fallbacks}"
    assert {row[0] for row in rows[:3]} == {"Pour-over kettle", "Filter beans 500g", "Earl Grey 250g"}, sql
    assert verify_run(store, result.run_id).ok


async def test_self_refine_critiques_with_a_structured_verdict(store, qwen):
    question = ("A baker had 3 trays of 8 rolls. She sold 2 trays and then 3 more rolls. "
                "How many rolls are left? Answer with the number.")
    result = await run("self-refine", question, store=store, models={"local": qwen},
                       params={"max_iterations": 1})
    assert result.answer and verify_run(store, result.run_id).ok
    critiques = store.events(result.run_id, types={"critique"})
    assert critiques, "the critic ran and its verdict was recorded"


async def test_each_choice_is_counted_when_n_is_above_one(store, qwen):
    store.create_run("r", "test", "t")
    ctx = RunContext(run_id="r", models={"local": qwen}, roles={"default": "local"}, writer=TraceWriter(store, "r"))
    samples = await ctx.sample("solver", [{"role": "user", "content": "Name a prime number."}], n=3,
                               temperature=1.0, max_tokens=16, seed=3)
    event = store.events("r", types={"llm_call"})[0]
    assert len(samples.texts) == 3 and len(event["choice_tokens"]) == 3
    assert event["completion_tokens"] == sum(event["choice_tokens"])
    assert event["server_usage"][0]["completion_tokens"] < event["completion_tokens"]


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


async def test_a_tool_call_through_the_server_and_the_answer_from_its_result(store, qwen):
    """The drop-in server's tool loop on the real model: the client's tools reach llama.cpp,
    the call comes back in OpenAI's shape, and the tool's result turns into the answer.
    Qwen2.5-Coder writes its call as a JSON code block that llama.cpp leaves in content;
    the backend reads it as the call (a fallback the trace counts)."""
    import json

    from test_server import asgi_client

    from refinegraph.config import Config
    from refinegraph.server import create_app

    client = asgi_client(create_app(Config(), models={"local": qwen}, store=store))
    chat = [{"role": "user", "content": "What is the weather in Paris right now? Use the tool."}]
    first = await client.chat.completions.create(model="greedy:local", messages=chat, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and "paris" in json.loads(call.function.arguments)["city"].lower()
    run_id = first.model_extra["refinegraph"]["run_id"]
    assert store.events(run_id, types={"tool_call"}) and verify_run(store, run_id).ok
    assert [e["kind"] for e in store.events(run_id, types={"fallback"})] == ["tool_calls_from_content"]
    chat += [choice.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 18, "sky": "sunny"}'}]
    second = await client.chat.completions.create(model="greedy:local", messages=chat, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop" and "18" in second.choices[0].message.content
