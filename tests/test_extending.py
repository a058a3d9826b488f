"""docs/extending.md's examples run as written: each section's Python blocks, in order, in
a fresh namespace (what they register is undone afterwards)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from refinegraph import backends, events, registry
from refinegraph.tools import answers

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def sections(text: str) -> dict[str, list[str]]:
    """"## " heading -> the Python code blocks under it."""
    found: dict[str, list[str]] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        blocks = BLOCK.findall(body)
        if blocks:
            found[title.strip()] = blocks
    return found


SECTIONS = sections(PAGE.read_text(encoding="utf-8"))


@pytest.fixture
def undo_registrations():
    """What the examples register (graphs, answer types, event types, backends) is removed after."""
    registry.list_graphs()  # the built-in graphs loaded first, so that they are what is kept
    graphs = dict(registry._graphs)
    projections = dict(answers._projections)
    registered, decisions, adapter = dict(events._registered), set(events.DECISION_TYPES), events.EVENT_ADAPTER
    known_backends = dict(backends._backends)
    yield
    backends._backends.clear()
    backends._backends.update(known_backends)
    registry._graphs.clear()
    registry._graphs.update(graphs)
    answers._projections.clear()
    answers._projections.update(projections)
    events._registered.clear()
    events._registered.update(registered)
    events.DECISION_TYPES.clear()
    events.DECISION_TYPES.update(decisions)
    events.EVENT_ADAPTER = adapter


def test_the_page_has_its_four_examples():
    assert list(SECTIONS) == ["A new graph", "A new answer type", "A new event type", "A new model backend"]


def test_blocks_are_found_in_order():
    page = "intro\n## One\n```python\na = 1\n```\ntext\n```python\nb = a\n```\n## Two\n```\nnot python\n```\n"
    assert sections(page) == {"One": ["a = 1\n", "b = a\n"]}


@pytest.mark.parametrize("title", list(SECTIONS))
def test_example_runs(title, undo_registrations, monkeypatch):
    """Run as a module of its own (LangGraph reads a node's type hints from its module)."""
    module = types.ModuleType("docs_extending_" + re.sub(r"\W+", "_", title.lower()))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, code in enumerate(SECTIONS[title], 1):
        exec(compile(code, f"{PAGE.name} [{title}, block {number}]", "exec"), module.__dict__)
