"""Imports point one way and never round in a circle (DESIGN.md, "Layout"):

    app (the public API facade, CLI, server, bench, batch)
      -> graphs -> agents -> tools / prompts -> runtime (the rest of refinegraph)

Every import is read with `ast`, at module level and inside functions (an import inside a
function is still a dependency; only `if TYPE_CHECKING:` blocks, which never run, are left
out). Importing `a.b.c` also runs the package `a.b`'s __init__, so that edge is counted too
(except the root package's, which every module is inside of).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject's package-dir)
FOLDERS = {"refinegraph": "refinegraph", "agents": "refinegraph.agents", "graphs": "refinegraph.graphs",
           "tools": "refinegraph.tools", "prompts": "refinegraph.prompts"}
LAYERS = {"runtime": 0, "tools": 1, "prompts": 1, "agents": 2, "graphs": 3, "app": 4}
APP = ("refinegraph.cli", "refinegraph.server", "refinegraph.bench", "refinegraph.batch")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the installed package."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> str:
    for name in ("graphs", "agents", "tools", "prompts"):
        if module == f"refinegraph.{name}" or module.startswith(f"refinegraph.{name}."):
            return name
    if module == "refinegraph" or any(module == p or module.startswith(p + ".") for p in APP):
        return "app"
    return "runtime"


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `if TYPE_CHECKING:` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def imports(source: str, module: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    """The package's modules that `source` (the text of `module`) imports, anywhere in it."""
    tree = ast.parse(source)
    skipped = _type_checking_only(tree)
    targets: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets += [f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target
                        for alias in node.names]
    found = set()
    for target in targets:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        if target not in known:
            continue
        found.add(target)
        parent = target.rsplit(".", 1)[0]
        while parent != "refinegraph" and "." in parent:  # its package's __init__ runs first
            if not module.startswith(parent + "."):
                found.add(parent)
            parent = parent.rsplit(".", 1)[0]
    found.discard(module)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
            for name, path in known.items()}


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, targets in graph.items() for b in targets
                  if LAYERS[layer(b)] > LAYERS[layer(a)])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_a_higher_layer():
    assert upward(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_see_function_level_imports_cycles_and_layers(tmp_path):
    """The checker itself: an import inside a function, a cycle through a package's
    __init__, and an upward import are all found; TYPE_CHECKING imports are not."""
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    files = {
        "refinegraph/__init__.py": "",
        "refinegraph/core.py": "def f():\n    from refinegraph.tools.helper import g\n",
        "refinegraph/models/__init__.py": "from refinegraph.models.backend import B\n",
        "refinegraph/models/backend.py": "from refinegraph import retry\n",
        "refinegraph/models/base.py": "",
        "refinegraph/retry.py": "from refinegraph.models.base import X\n",
        "refinegraph/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from refinegraph.graphs.g import G\n",
        "tools/__init__.py": "", "tools/helper.py": "from refinegraph import core\n",
        "agents/__init__.py": "", "graphs/__init__.py": "", "graphs/g.py": "", "prompts/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert upward(graph) == ["refinegraph.core (runtime) imports refinegraph.tools (tools)",
                             "refinegraph.core (runtime) imports refinegraph.tools.helper (tools)"]
    assert sorted(cycles(graph)) == [
        ["refinegraph.core", "refinegraph.tools.helper"],
        ["refinegraph.models", "refinegraph.models.backend", "refinegraph.retry"],
    ]


def test_the_runner_keeps_its_public_names_after_the_split():
    """refinegraph.runner is split by job (refinegraph.runs, refinegraph.compiled) but callers
    import from it as before."""
    import refinegraph
    from refinegraph import runner

    names = {"RunResult", "RunFailed", "RunNotResumable", "TraceUnusable", "run", "resume", "replay", "decisions",
             "ConfigError", "compiled_graph", "clear_compiled_graphs", "RECURSION_LIMIT", "ReplayModel",
             "ReplayResult", "TraceFirstSaver", "checkpoint_file", "open_saver", "executions", "superseded",
             "new_run_id", "close_shared_stores", "default_store", "shared_store"}
    assert names <= set(runner.__all__) and all(hasattr(runner, name) for name in names)
    assert (refinegraph.run, refinegraph.resume, refinegraph.replay) == (runner.run, runner.resume, runner.replay)
    assert len((ROOT / "refinegraph" / "runner.py").read_text(encoding="utf-8").splitlines()) < 40
