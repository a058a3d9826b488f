"""Batch runs: results.jsonl, resume after a crash, trace shards that merge, the Ray executor."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from refinegraph import run
from refinegraph.batch import BatchDirError, BatchInputError, run_batch
from refinegraph.batch.outdir import read_jsonl
from refinegraph.config import Config, ModelSpec
from refinegraph.models import ScriptedModel
from refinegraph.trace.merge import MergeConflict, merge_stores
from refinegraph.trace.store import TraceStore
from refinegraph.trace.verify import verify_run

from conftest import role_of, verdict
from needs import needs

CALLS_PER_RUN = 4  # self-refine below: solve, critique (revise), refine, critique (done)


def respond(messages):
    """Each run: a draft, a 'revise' verdict, a refined answer, a 'done' verdict."""
    role = role_of(messages)
    if role == "critic":
        return verdict(9, done=True) if "refined answer" in messages[-1]["content"] else verdict(4)
    return "refined answer" if role == "refiner" else "draft answer"


class PowerCut(BaseException):
    """Raised from inside a model call, like kill -9: nothing is sealed or flushed."""


class CountingModel(ScriptedModel):
    """Test double: the scripted self-refine model, optionally failing on its Kth call."""

    def __init__(self, fail_on: int | None = None, error: type[BaseException] = PowerCut):
        super().__init__(respond, name="local")
        self.fail_on, self.error, self.answered = fail_on, error, 0

    async def sample(self, messages, **kwargs):
        if self.fail_on is not None and len(self.calls) + 1 == self.fail_on:
            self.calls.append(messages)
            raise self.error(f"failure on call {self.fail_on}")
        samples = await super().sample(messages, **kwargs)
        self.answered += 1
        return samples


def results(out):
    return {row["id"]: row for row in read_jsonl(out / "results.jsonl")}


async def test_local_batch_writes_one_result_line_per_input(tmp_path, store):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('"task zero"\n\n{"task": "task one", "id": "q1"}\n"task two"\n', encoding="utf-8")
    model = CountingModel()
    seen = []
    summary = await run_batch(inputs, graph="self-refine", models={"local": model}, out=tmp_path / "out",
                              concurrency=2, store=store, on_result=seen.append)
    assert (summary.inputs, summary.finished, summary.errors, summary.skipped) == (3, 3, 0, 0)
    assert summary.calls == 3 * CALLS_PER_RUN == model.answered
    rows = results(tmp_path / "out")
    assert sorted(rows) == ["0", "2", "q1"] and len(seen) == 3
    for ident, row in rows.items():
        assert set(row) >= {"id", "answer", "stop_reason", "run_id", "tokens", "calls", "error"}
        assert (row["status"], row["answer"], row["stop_reason"], row["calls"], row["error"]) == (
            "finished", "refined answer", "done", CALLS_PER_RUN, None)
        assert row["tokens"] > 0
        assert verify_run(store, row["run_id"]).sealed
        started = store.events(row["run_id"], types={"run_started"})[0]
        assert started["input"]["task"] == {"0": "task zero", "q1": "task one", "2": "task two"}[ident]
    started = read_jsonl(tmp_path / "out" / "started.jsonl")
    assert {r["id"]: r["run_id"] for r in started} == {i: r["run_id"] for i, r in rows.items()}

    again = await run_batch(inputs, graph="self-refine", models={"local": model}, out=tmp_path / "out", store=store)
    assert (again.skipped, again.ran) == (3, 0) and model.answered == 3 * CALLS_PER_RUN


async def test_bad_inputs_and_a_different_batch_in_the_same_dir_are_refused(tmp_path, store):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\nnot json\n', encoding="utf-8")
    with pytest.raises(BatchInputError, match="bad.jsonl:2: not JSON"):
        await run_batch(bad, graph="self-refine", models={"local": CountingModel()}, out=tmp_path / "o", store=store)
    with pytest.raises(BatchInputError, match="has no 'task'"):
        await run_batch([{"question": "x"}], graph="self-refine", out=tmp_path / "o", store=store)
    with pytest.raises(BatchInputError, match="used twice"):
        await run_batch([{"task": "a", "id": 1}, {"task": "b", "id": 1}], graph="self-refine", out=tmp_path / "o")
    await run_batch(["a"], graph="self-refine", models={"local": CountingModel()}, out=tmp_path / "o", store=store)
    with pytest.raises(BatchDirError, match="other graph"):
        await run_batch(["a"], graph="greedy", models={"local": CountingModel()}, out=tmp_path / "o", store=store)


@pytest.mark.parametrize("crash_on", [6, 11, 17])
async def test_a_crashed_batch_resumes_without_paying_finished_calls_again(tmp_path, store, crash_on):
    tasks = [f"task {i}" for i in range(6)]
    out = tmp_path / "out"
    crashing = CountingModel(fail_on=crash_on)
    with pytest.raises(PowerCut):
        await run_batch(tasks, graph="self-refine", models={"local": crashing}, out=out, concurrency=2, store=store)
    paid_before = crashing.answered
    # The other run in flight may get one more call answered (and committed) while the
    # failure unwinds: each run yields to the loop while its call's event commits.
    assert crash_on - 1 <= paid_before <= crash_on
    done_before = results(out)
    assert len(done_before) < len(tasks) and all(r["status"] == "finished" for r in done_before.values())
    started = {r["id"]: r["run_id"] for r in read_jsonl(out / "started.jsonl")}
    interrupted = {i: run_id for i, run_id in started.items() if i not in done_before}
    # The run the power cut hit stays "running"; its siblings, cancelled by the batch on the
    # way out, are recorded as "interrupted".
    assert interrupted and all(store.run(r)["status"] in ("running", "interrupted") for r in interrupted.values()
                               if store.run(r) is not None)

    healthy = CountingModel()
    summary = await run_batch(tasks, graph="self-refine", models={"local": healthy}, out=out, concurrency=2,
                              store=store)
    assert summary.skipped == len(done_before) and summary.finished == len(tasks) - len(done_before)
    # Every call is paid once over the two invocations: none that had finished is paid again.
    assert paid_before + healthy.answered == len(tasks) * CALLS_PER_RUN
    rows = results(out)
    assert len(rows) == len(tasks) and all(r["status"] == "finished" for r in rows.values())
    resumed = {i for i, r in rows.items() if r["resumed"]}
    assert resumed and resumed <= set(interrupted)
    for ident, row in rows.items():
        if ident in interrupted:
            assert row["run_id"] == interrupted[ident]  # resumed under the id recorded before it started
        assert row["calls"] == CALLS_PER_RUN and row["answer"] == "refined answer"
        report = verify_run(store, row["run_id"])
        assert report.ok and report.sealed
    for ident in resumed:
        assert [e["type"] for e in store.events(rows[ident]["run_id"])].count("run_resumed") == 1

    third = await run_batch(tasks, graph="self-refine", models={"local": CountingModel()}, out=out, store=store)
    assert (third.skipped, third.ran, third.calls) == (len(tasks), 0, 0)


async def test_a_failed_run_is_retried_on_the_next_invocation(tmp_path, store):
    out = tmp_path / "out"
    failing = CountingModel(fail_on=3, error=RuntimeError)
    first = await run_batch(["a", "b"], graph="self-refine", models={"local": failing}, out=out, concurrency=1,
                            store=store)
    assert (first.finished, first.errors) == (1, 1)
    failed = [r for r in results(out).values() if r["status"] == "error"][0]
    assert "RuntimeError" in failed["error"] and store.run(failed["run_id"])["status"] == "error"
    kept = await run_batch(["a", "b"], graph="self-refine", models={"local": CountingModel()}, out=out,
                           store=store, retry_errors=False)
    assert kept.ran == 0
    healthy = CountingModel()
    second = await run_batch(["a", "b"], graph="self-refine", models={"local": healthy}, out=out, store=store)
    assert (second.skipped, second.finished, second.resumed) == (1, 1, 1)
    assert failing.answered + healthy.answered == 2 * CALLS_PER_RUN
    row = results(out)[failed["id"]]
    assert row["run_id"] == failed["run_id"] and row["status"] == "finished"
    assert verify_run(store, row["run_id"]).ok


async def _runs_into(path, tasks, run_ids=None):
    shard = TraceStore(path)
    ids = []
    for i, task in enumerate(tasks):
        result = await run("self-refine", task, store=shard, models={"local": CountingModel()}, checkpoint=False,
                           run_id=run_ids[i] if run_ids else None)
        ids.append(result.run_id)
    shard.close()
    return ids


async def test_two_shards_merge_into_one_store_and_every_run_verifies(tmp_path):
    a = await _runs_into(tmp_path / "a.sqlite", ["a1", "a2"])
    b = await _runs_into(tmp_path / "b.sqlite", ["b1"])
    target = TraceStore(tmp_path / "merged.sqlite")
    report = merge_stores([tmp_path / "a.sqlite", tmp_path / "b.sqlite"], target)
    assert sorted(report.copied) == sorted(a + b) and report.ok and report.blobs > 0
    for run_id in a + b:
        check = verify_run(target, run_id)
        assert check.ok and check.sealed and check.events > 0
        assert target.events(run_id, types={"run_finished"})[0]["answer"] == "refined answer"
    again = merge_stores([tmp_path / "a.sqlite"], target)
    assert sorted(again.already) == sorted(a) and not again.copied and again.events == 0


async def test_a_duplicate_run_id_with_another_history_is_refused(tmp_path):
    [run_id] = await _runs_into(tmp_path / "a.sqlite", ["original task"])
    await _runs_into(tmp_path / "b.sqlite", ["another task"], run_ids=[run_id])
    target = TraceStore(tmp_path / "merged.sqlite")
    merge_stores([tmp_path / "a.sqlite"], target)
    events = len(target.raw_events(run_id))
    with pytest.raises(MergeConflict, match=f"run {run_id} .* different history"):
        merge_stores([tmp_path / "b.sqlite"], target)
    assert len(target.raw_events(run_id)) == events and verify_run(target, run_id).ok
    assert target.events(run_id, types={"run_started"})[0]["input"]["task"] == "original task"
    skipped = merge_stores([tmp_path / "b.sqlite"], target, on_conflict="skip")
    assert skipped.conflicts == [run_id] and not skipped.copied
    with pytest.raises(MergeConflict, match="more than one"):
        merge_stores([tmp_path / "a.sqlite", tmp_path / "b.sqlite"], TraceStore(tmp_path / "fresh.sqlite"))


async def test_a_run_resumed_after_a_merge_extends_it(tmp_path):
    from refinegraph import resume

    shard = TraceStore(tmp_path / "a.sqlite")
    ckpt = tmp_path / "a.ckpt.sqlite"
    with pytest.raises(PowerCut):
        await run("self-refine", "t", store=shard, models={"local": CountingModel(fail_on=3)}, checkpoint_path=ckpt,
                  run_id="r1")
    target = TraceStore(tmp_path / "merged.sqlite")
    assert merge_stores([shard], target).copied == ["r1"]
    assert not verify_run(target, "r1").sealed
    await resume("r1", store=shard, models={"local": CountingModel()})
    report = merge_stores([shard], target)
    assert report.extended == ["r1"] and report.ok
    check = verify_run(target, "r1")
    assert check.ok and check.sealed and target.run("r1")["status"] == "finished"


# -- an OpenAI-compatible stub on loopback, for the CLI and for Ray's worker processes ----------


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        n = body.get("n", 1)
        reply = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": i, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "The answer is 42."}} for i in range(n)],
                 "usage": {"prompt_tokens": 20, "completion_tokens": 5 * n, "total_tokens": 20 + 5 * n}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - llama.cpp's Prometheus counters, as the bench reads them
        predicted = sum(5 * r.get("n", 1) for r in self.server.requests)
        data = (f"llamacpp:prompt_tokens_total {20 * len(self.server.requests)}\n"
                f"llamacpp:prompt_tokens_cached_total 0\nllamacpp:tokens_predicted_total {predicted}\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return None


@pytest.fixture
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def stub_config(server) -> Config:
    return Config(models={"stub": ModelSpec(backend="openai", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                                            model="stub-model")}, roles={"default": "stub"})


def test_cli_batch_runs_a_jsonl_file_against_an_openai_endpoint(tmp_path, stub_server, rg_home):
    from typer.testing import CliRunner

    from refinegraph.cli.app import app

    config = tmp_path / "config.toml"
    config.write_text(f'[models.stub]\nbackend = "openai"\nbase_url = "http://127.0.0.1:{stub_server.server_port}'
                      f'/v1"\nmodel = "stub-model"\n\n[roles]\ndefault = "stub"\n', encoding="utf-8")
    inputs = tmp_path / "qs.jsonl"
    inputs.write_text("\n".join(json.dumps(f"question {i}") for i in range(3)) + "\n", encoding="utf-8")
    args = ["batch", str(inputs), "--graph", "greedy", "--config", str(config), "--concurrency", "2",
            "-p", "max_tokens=32", "--out", str(tmp_path / "out"), "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["finished"], summary["calls"], summary["skipped"]) == (3, 3, 0)
    assert len(stub_server.requests) == 3 and all(r["max_tokens"] == 32 for r in stub_server.requests)
    rows = results(tmp_path / "out")
    assert {r["answer"] for r in rows.values()} == {"42"}
    store = TraceStore(rg_home / "traces.sqlite")
    assert all(verify_run(store, r["run_id"]).sealed for r in rows.values())
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and json.loads(second.stdout.strip().splitlines()[-1])["skipped"] == 3
    assert len(stub_server.requests) == 3
    wrong = CliRunner().invoke(app, ["batch", str(inputs), "--graph", "no-such-graph"])
    assert wrong.exit_code == 2 and "unknown graph" in wrong.output


async def test_bench_batch_sends_the_recorded_requests_raw_and_reports_a_ratio(stub_server, tmp_path):
    from benchmarks.batch import batch_bench, markdown

    address = f"http://127.0.0.1:{stub_server.server_port}"
    report = await batch_bench(runs=4, concurrency=2, max_tokens=16, rounds=2, address=address,
                               config=stub_config(stub_server), model_id="stub-model")
    # warm-up batch + 2 rounds of (batch, raw): 4 requests each
    assert len(stub_server.requests) == 5 * 4
    raw = [r for r in report["measurements"] if r["configuration"].startswith("raw")]
    assert len(raw) == 2 and all(r["server_completion_tokens"] == 20 and r["requests"] == 4 for r in raw)
    assert report["refinegraph_batch"]["completion_tokens"] == report["raw_openai"]["completion_tokens"] == 40
    assert report["ratio"] > 0 and "ratio" in markdown(report)
    batch_requests, raw_requests = stub_server.requests[4:8], stub_server.requests[8:12]
    strip = [{k: v for k, v in r.items() if k != "messages"} for r in batch_requests]
    assert strip == [{k: v for k, v in r.items() if k != "messages"} for r in raw_requests]
    assert all(r["messages"][-1]["content"].startswith("[r0r-") for r in raw_requests)
    assert [r["messages"][-1]["content"].split("] ", 1)[1] for r in sorted(raw_requests, key=str)] == [
        r["messages"][-1]["content"].split("] ", 1)[1] for r in sorted(batch_requests, key=str)]


def test_bench_batch_is_a_command():
    from typer.testing import CliRunner

    from refinegraph.cli.app import app

    result = CliRunner().invoke(app, ["bench", "batch", "--help"])
    assert result.exit_code == 0 and "raw asyncio" in result.output


# -- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason=needs("an optional package", "the ray executor needs ray (the ray and "
                                                                          "dev extras install it)"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


async def test_ray_executor_writes_shards_that_merge_into_one_store(tmp_path, store, stub_server, ray_cluster):
    out = tmp_path / "out"
    tasks = [{"task": f"question {i}", "id": f"q{i}"} for i in range(6)]
    summary = await run_batch(tasks, graph="greedy", executor="ray", concurrency=2, config=stub_config(stub_server),
                              params={"max_tokens": 32}, out=out, store=store)
    assert (summary.finished, summary.errors, summary.calls) == (6, 0, 6)
    assert len(stub_server.requests) == 6
    rows = results(out)
    assert sorted(rows) == [f"q{i}" for i in range(6)] and {r["answer"] for r in rows.values()} == {"42"}
    shards = sorted(p.name for p in (out / "shards").glob("worker-*.sqlite") if "checkpoints" not in p.name)
    assert 1 <= len(shards) <= 2 and {r["shard"] for r in rows.values()} <= set(shards)
    assert summary.merge.startswith("6 copied")
    for row in rows.values():
        check = verify_run(store, row["run_id"])
        assert check.ok and check.sealed
        assert store.events(row["run_id"], types={"run_started"})[0]["models"]["stub"]["backend"] == "openai"
    again = await run_batch(tasks, graph="greedy", executor="ray", concurrency=2, config=stub_config(stub_server),
                            params={"max_tokens": 32}, out=out, store=store)
    assert (again.skipped, again.ran) == (6, 0) and len(stub_server.requests) == 6
    with pytest.raises(ValueError, match="other processes"):
        await run_batch(["x"], graph="greedy", executor="ray", models={"stub": CountingModel()}, out=tmp_path / "o")


async def test_ray_executor_resumes_an_interrupted_run_in_the_shard_that_holds_it(tmp_path, store, stub_server,
                                                                                  ray_cluster):
    out = tmp_path / "out"
    shard = out / "shards" / "worker-earlier.sqlite"
    earlier = TraceStore(shard)
    with pytest.raises(PowerCut):  # an earlier attempt died inside the run's model call
        await run("greedy", "question 0", store=earlier, models={"stub": CountingModel(fail_on=1)},
                  config=stub_config(stub_server), checkpoint_path=out / "shards" / "worker-earlier.checkpoints.sqlite",
                  run_id="r0", params={"max_tokens": 32})
    earlier.close()
    (out / "started.jsonl").write_text('{"id": "q0", "run_id": "r0"}\n', encoding="utf-8")
    summary = await run_batch([{"task": "question 0", "id": "q0"}, {"task": "question 1", "id": "q1"}],
                              graph="greedy", executor="ray", concurrency=2, config=stub_config(stub_server),
                              params={"max_tokens": 32}, out=out, store=store)
    assert (summary.finished, summary.resumed) == (2, 1) and len(stub_server.requests) == 2
    row = results(out)["q0"]
    assert (row["run_id"], row["shard"], row["resumed"], row["answer"]) == ("r0", shard.name, True, "42")
    check = verify_run(store, "r0")
    assert check.ok and check.sealed
    assert [e["type"] for e in store.events("r0")].count("run_resumed") == 1
