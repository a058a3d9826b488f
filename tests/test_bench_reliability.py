"""`refinegraph bench reliability`: parts run in turn, a part that breaks is a failed part
(the others still run), the last printed line sums every part, and the exit code says ok."""

from __future__ import annotations

import asyncio
import json
import sys
import types

from typer.testing import CliRunner

from benchmarks import reliability
from benchmarks.reliability_common import Section, summary_line
from refinegraph.cli.app import app


def test_summary_line_sums_every_part_and_names_the_failed():
    good = Section(name="a", ok=True, runs=3, faults_injected=5, traces_verified=3)
    bad = Section(name="b", ok=True, runs=2, events_lost=1, writes_made=2)
    assert bad.expect(False, "two writes") is False and not bad.ok and bad.problems == ["two writes"]
    assert summary_line([good, bad]) == ("reliability: runs 5, faults injected 5, traces verified 3 (failed 0), "
                                         "events lost 1, writes made 2: FAILED: b")
    assert summary_line([good]).endswith(": ok")


def _fake_parts(monkeypatch):
    module = types.ModuleType("benchmarks.fake_parts")

    def blocking(workdir):  # a sync part that runs its own event loop, as several do
        asyncio.run(asyncio.sleep(0))
        (workdir / "touched").write_text("x")
        return Section(name="a blocking part", ok=True, runs=1, traces_verified=1)

    async def broken(runs):
        raise RuntimeError(f"broke after {runs} runs")

    module.blocking, module.broken = blocking, broken
    monkeypatch.setitem(sys.modules, "benchmarks.fake_parts", module)
    monkeypatch.setattr(reliability, "PARTS", (reliability.Part("blocking", "fake_parts", "blocking"),
                                               reliability.Part("broken", "fake_parts", "broken", ("runs",))))


def test_a_broken_part_fails_alone_and_the_exit_code_says_so(monkeypatch, tmp_path):
    _fake_parts(monkeypatch)
    result = CliRunner().invoke(app, ["bench", "reliability", "--runs", "7", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "reliability: runs 1, faults injected 0, traces verified 1 (failed 0), events lost 0, writes made 0: "
        "FAILED: broken")
    report = json.loads((tmp_path / "report.json").read_text())
    blocking, broken = report["sections"]
    assert blocking["ok"] and (tmp_path / "work" / "blocking" / "touched").is_file()
    assert (blocking["name"], broken["name"]) == ("blocking", "broken")  # the part's name, whatever it calls itself
    assert not broken["ok"] and broken["problems"] == ["the part did not run to its end: RuntimeError: broke "
                                                       "after 7 runs"]
    assert "## broken" in (tmp_path / "report.md").read_text()


def test_unknown_parts_are_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["bench", "reliability", "--parts", "faults,nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown parts: nope" in result.output


def test_tamper_part_through_the_command(tmp_path):
    result = CliRunner().invoke(app, ["bench", "reliability", "--parts", "tamper", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(app, ["bench", "reliability", "--parts", "tamper", "--out", str(tmp_path)])
    assert again.exit_code == 0, again.output  # a second run into the same --out starts from an empty work folder
    report = json.loads((tmp_path / "report.json").read_text())
    (tamper,) = report["sections"]
    assert tamper["ok"] and tamper["faults_injected"] == 8 and tamper["traces_failed"] == 0
    assert result.output.strip().splitlines()[-1].endswith("writes made 0: ok")
