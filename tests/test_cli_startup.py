"""The CLI starts fast because cheap commands import nothing heavy: `refinegraph --help` and
`refinegraph graphs` must not import the model SDKs, langgraph, sqlglot or the runtime's
pydantic models (pydantic itself typer imports to parse any command's options). Their
time is checked by `python -m refinegraph.startup`, not here: a busy test machine would
make a time limit flaky; which modules are imported does not depend on the load)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("openai", "langchain_core", "langgraph", "httpx", "sqlglot", "xllamacpp", "tenacity",
         "refinegraph.runner", "refinegraph.config", "refinegraph.events", "refinegraph.models.base")

_PROBE = """
import json, sys
from refinegraph.cli.app import main
sys.argv = ["refinegraph", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
sys.stdout.flush()
print("\\n@@" + json.dumps(sorted(h for h in HEAVY if h in sys.modules)))
"""


def _heavy_modules_after(*argv: str) -> tuple[list[str], str]:
    """The heavy modules imported by `refinegraph ARGV...`, and what it printed."""
    probe = f"HEAVY = {HEAVY!r}\n{_PROBE}"
    proc = subprocess.run([sys.executable, "-c", probe, json.dumps(argv)], capture_output=True, text=True,
                          timeout=120, check=True)
    printed, _, modules = proc.stdout.rpartition("\n@@")
    return json.loads(modules), printed


@pytest.mark.parametrize("argv", [("--help",), ("graphs",), ("trace", "--help"), ("bench", "--help"),
                                  ("sql", "--help"), ("run", "--help")])
def test_cheap_commands_import_nothing_heavy(argv):
    heavy, printed = _heavy_modules_after(*argv)
    assert printed.strip(), "the command printed nothing"
    assert heavy == [], f"`refinegraph {' '.join(argv)}` imported {heavy}"


def test_graphs_lists_every_registered_graph_with_its_description():
    """The listing comes from a catalog that does not build graphs; it must say what the
    registry says (a graph added without a catalog line, or a changed description, fails here)."""
    from refinegraph.registry import list_graphs

    _, printed = _heavy_modules_after("graphs")
    lines = [line.split(None, 1) for line in printed.strip().splitlines()]
    assert [(name, desc.strip()) for name, desc in lines] == [(s.name, s.description) for s in list_graphs()]


def test_import_refinegraph_is_cheap_and_names_still_resolve():
    code = ("import sys, refinegraph; assert 'pydantic' not in sys.modules and 'langgraph' not in sys.modules, "
            "sorted(sys.modules); from refinegraph import run, Config, RunResult, get_graph; "
            "from refinegraph.models import ScriptedModel, build_model, ModelUnavailable; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_catalog_names_each_graphs_module():
    from refinegraph.graphs import CATALOG
    from refinegraph.registry import list_graphs

    builtin = {s.name: s.build.__module__ for s in list_graphs() if s.name in CATALOG}
    assert builtin == {name: f"refinegraph.graphs.{module}" for name, (module, _) in CATALOG.items()}


def test_a_run_imports_only_its_graphs_module():
    code = ("import sys; from refinegraph.registry import get_graph; get_graph('greedy'); "
            "print(sorted(m for m in sys.modules if m.startswith('refinegraph.graphs.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "['refinegraph.graphs.consistency']"
