"""The core apart from its harnesses: the reliability and performance harnesses live in
benchmarks/ (not installed), `refinegraph bench NAME` finds them in a checkout and says what to
run elsewhere, and no graph builder takes a parameter that exists only for a benchmark."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from benchmarks.instant import EXPECTED_ANSWER, InstantModel
from benchmarks.overhead import BareContext, invoke_bare
from refinegraph.cli import harness
from refinegraph.cli.app import app
from refinegraph.graphs.self_refine import build_self_refine
from refinegraph.nodes import node_events, traced
from refinegraph.registry import list_graphs

ROOT = Path(__file__).resolve().parent.parent
INSTALLED = ("refinegraph", "agents", "graphs", "tools", "prompts")


def test_no_graph_builder_takes_a_parameter_of_its_own_beyond_params_and_checkpointer():
    for spec in list_graphs():
        assert list(inspect.signature(spec.build).parameters) == ["params", "checkpointer"], spec.name


def test_the_installed_package_neither_ships_nor_imports_the_harnesses():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert not [p for p in packages if p.split(".")[0] == "benchmarks"]
    shipped = {p.stem for p in (ROOT / "refinegraph" / "bench").glob("*.py")}
    assert not shipped & {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__"}
    importers = []
    for folder in INSTALLED:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "benchmarks" or n.startswith("benchmarks.") for n in names):
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == []  # refinegraph/cli/harness.py loads it by path, only when asked


async def test_a_traced_node_emits_its_events_unless_node_events_are_off():
    emitted: list[str] = []
    runtime = SimpleNamespace(context=SimpleNamespace(emit=lambda event: emitted.append(event.type)))

    async def node_fn(state, runtime):
        return {"seen": state["x"]}

    node = traced("n", node_fn)
    assert await node({"x": 1}, runtime) == {"seen": 1} and emitted == ["node_started", "node_finished"]
    token = node_events.set(False)
    try:
        assert await node({"x": 2}, runtime) == {"seen": 2}
    finally:
        node_events.reset(token)
    assert emitted == ["node_started", "node_finished"] and node_events.get() is True


async def test_the_bare_langgraph_run_of_the_benchmarks_builds_no_node_event(monkeypatch):
    """What "bare" measures: the same graph and node functions, no node wrapper's events; the
    decision events the node functions build themselves (critique, refine, stop) are dropped."""
    emitted: list[str] = []
    monkeypatch.setattr(BareContext, "emit", lambda self, event: emitted.append(event.type))
    state = await invoke_bare(build_self_refine({}), {"task": "What is 6 times 7?"}, InstantModel())
    assert state["answer"] == EXPECTED_ANSWER and emitted[-1] == "stop"
    assert not {"node_started", "node_finished"} & set(emitted)


def test_refinegraph_bench_hands_a_harness_command_to_the_checkouts_benchmarks():
    result = CliRunner().invoke(app, ["bench", "overhead", "--help"])
    assert result.exit_code == 0, result.output
    assert "refinegraph bench overhead" in result.output and "--rounds" in result.output


def test_without_a_checkout_a_harness_command_says_to_run_python_m_benchmarks(monkeypatch):
    monkeypatch.setattr(harness, "checkout_harness", lambda: None)
    result = CliRunner().invoke(app, ["bench", "reliability", "--parts", "tamper"])
    assert result.exit_code == 2
    assert "python -m benchmarks reliability" in " ".join(result.output.split())


def test_python_m_benchmarks_lists_the_harnesses_from_the_repository_root():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in harness.HARNESSES:
        assert command in done.stdout


def test_a_harness_child_process_imports_benchmarks_from_any_folder(tmp_path):
    from benchmarks import child_env

    code = "import benchmarks.reliability_common"
    alone = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in child_env().items() if k != "PYTHONPATH"})
    assert alone.returncode != 0 and "No module named 'benchmarks'" in alone.stderr
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=child_env())
    assert done.returncode == 0, done.stderr
