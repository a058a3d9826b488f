"""Ctrl-C and SIGTERM end a run as `interrupted`: its trace says so, the command prints the
run id and the exact resume line (a JSON object under --json) and exits 130, and `resume`
finishes the run without --force, paying no finished call again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from benchmarks.stub_server import CountingServer, stub_reply
from refinegraph.trace.store import open_store
from refinegraph.trace.verify import verify_run


def _config(tmp_path, server) -> str:
    path = tmp_path / "stub.toml"
    path.write_text(f'[models.m]\nbackend = "openai"\nbase_url = "{server.url}"\nmodel = "stub-model"\n'
                    '[roles]\ndefault = "m"\n', encoding="utf-8")
    return str(path)


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "refinegraph.cli.app", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(("sig", "as_json"), [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_a_signal_records_the_run_as_interrupted_and_resume_finishes_it(tmp_path, sig, as_json):
    location = str(tmp_path / "traces.sqlite")
    env = {**os.environ, "REFINEGRAPH_TRACE_STORE": location, "REFINEGRAPH_HOME": str(tmp_path)}
    with CountingServer(stub_reply) as server:
        config = _config(tmp_path, server)
        server.hold_from(2)  # the solver answers; the critic's call hangs until released
        process = _cli("run", "self-refine", "What is 2 + 3?", "--config", config, *(["--json"] if as_json else []),
                       env=env)
        assert server.holding.wait(timeout=120), process.stderr.read() if process.poll() is not None else "no call"
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=60)
        server.release()
        assert process.returncode == 130, stderr
        if as_json:
            said = json.loads(stdout)
            run_id = said["run_id"]
            assert said["status"] == "interrupted" and said["resume"] == f"refinegraph resume {run_id}"
        else:
            run_id = stdout.strip().removeprefix("run: ")
            assert stdout.strip() == f"run: {run_id}" and f"refinegraph resume {run_id}" in stderr
        with open_store(location) as store:
            assert store.run(run_id)["status"] == "interrupted"
            [stopped] = store.events(run_id, types={"run_interrupted"})
            assert sig.name in stopped["reason"]
            assert verify_run(store, run_id).ok
        paid_before = server.count()
        resumed = subprocess.run([sys.executable, "-m", "refinegraph.cli.app", "resume", run_id, "--config", config,
                                  "--json"], env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        result = json.loads(resumed.stdout)
        assert result["run_id"] == run_id and result["stop_reason"] == "done" and result["cache_hits"] == 1
        # The solver's answer came from the trace; only the calls not finished went out again.
        assert server.count() - paid_before == result["model_calls"] - 1
    with open_store(location) as store:
        report = verify_run(store, run_id)
        assert report.ok and report.sealed and store.run(run_id)["status"] == "finished"
