"""Budgets bind on pools as on live models (issue 16, point 5): a recorded completion is cut
at the max_tokens the budget leaves, so no question is charged past its budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph.budget import Budget, BudgetExceeded
from refinegraph.cli.app import app
from refinegraph.context import RunContext
from refinegraph.models.pool import PoolModel, estimate_tokens
from refinegraph.trace.store import TraceWriter

MINI = Path(__file__).parent / "data" / "spider_mini"
SYSTEMS = "HyperSQL,SuperSQL,DIN_SQL_GPT4,DAIL_SQL_GPT4,C3_SQL,RESDSQL_3B,SFT_CodeS_15B,Llama2-7B,starcoder_7b"


async def test_a_pool_call_is_charged_no_more_than_the_budget(store, tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"question": "How many?", "gold": "1",
                                "samples": {"s": ["step " * 80 + "The answer is 1."] * 4}}) + "\n")
    store.create_run("r", "test", "t")
    ctx = RunContext(run_id="r", models={"p": PoolModel("p", path, ["s"])}, roles={"default": "p"},
                     writer=TraceWriter(store, "r"), budget=Budget(max_tokens=300))
    samples = await ctx.sample("solver", [{"role": "user", "content": "How many?"}], n=4, max_tokens=2048)
    assert ctx.usage.total_tokens <= 300 and set(samples.finish_reasons) == {"length"}
    with pytest.raises(BudgetExceeded):
        await ctx.sample("solver", [{"role": "user", "content": "How many?"}], n=1, max_tokens=2048)


def test_bench_spider_pool_runs_stay_within_the_token_budget(tmp_path):
    """At 127 systems and 6,000 tokens, 62 of 295 questions were charged up to 13,350."""
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["bench", "spider", "--data", str(MINI), "--pool", str(MINI / "pool.jsonl"),
                                      "--systems", SYSTEMS, "--graphs", "sql-sc", "--limit", "4", "--out", str(out),
                                      "--budget-tokens", "300", "-p", "schema_samples=0"])
    assert result.exit_code == 0, result.output
    outcomes = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert all(o["tokens"] <= 300 for o in outcomes), [o["tokens"] for o in outcomes]


async def test_a_completion_longer_than_max_tokens_is_cut_there(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"question": "Q?", "gold": "1", "samples": {"s": ["x" * 400, "short"]}}) + "\n")
    samples = await PoolModel("p", path, ["s"]).sample([{"role": "user", "content": "Q?"}], n=2, max_tokens=20)
    assert samples.texts == ["x" * 80, "short"] and samples.finish_reasons == ["length", "stop"]
    assert samples.completion_tokens == [20, estimate_tokens("short")]
