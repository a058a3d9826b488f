"""Shared fixtures: an isolated REFINEGRAPH_HOME per test, a trace store, scripted models."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from refinegraph.bench.hostile_sql import make_scratch, remove_scratch
from refinegraph.bench.stub_server import role_of
from refinegraph.models import ScriptedModel
from refinegraph.trace.store import TraceStore


def pytest_configure(config):
    """The fast suite runs on SmolLM2 whatever else is installed: the qwen suite names its model."""
    os.environ["REFINEGRAPH_LOCAL_MODEL"] = "smollm2-135m"


@pytest.fixture(autouse=True)
def rg_home(tmp_path, monkeypatch):
    """Every test gets its own home: traces, checkpoints and config never leak between tests."""
    home = tmp_path / "rghome"
    monkeypatch.setenv("REFINEGRAPH_HOME", str(home))
    return home


@pytest.fixture
def store(rg_home) -> TraceStore:
    s = TraceStore(rg_home / "traces.sqlite")
    yield s
    s.close()


def verdict(score: int, done: bool = False, edits: list[str] | None = None) -> str:
    return json.dumps({"correctness": score, "completeness": score, "clarity": score, "score": score,
                       "verdict": "done" if done else "revise", "edits": edits or ["be more precise"]})


def scripted_by_role(critic_replies: list[str], name: str = "local", **kwargs) -> ScriptedModel:
    """A test double that answers each role from its own script: solver and refiner texts
    are numbered, the critic's replies come from `critic_replies` in order."""
    counters = {"solver": 0, "refiner": 0, "critic": 0}

    def respond(messages: list[dict[str, Any]]) -> str:
        role = role_of(messages)
        counters[role] += 1
        if role == "critic":
            return critic_replies[counters["critic"] - 1]
        return f"{role} answer {counters[role]}"

    model = ScriptedModel(respond, name=name, **kwargs)
    model.counters = counters  # type: ignore[attr-defined]
    return model


@pytest.fixture
def make_scripted() -> Callable[..., ScriptedModel]:
    return scripted_by_role


@pytest.fixture(autouse=True)
def fresh_compiled_graphs():
    """Tests that swap a node function need the graph compiled again."""
    from refinegraph.runner import clear_compiled_graphs
    clear_compiled_graphs()
    yield
    clear_compiled_graphs()


@pytest.fixture(scope="module")
def scratch():
    """Where file-writing hostile SQL aims (see hostile_sql.make_scratch): outside every database."""
    folder = make_scratch()
    yield folder
    remove_scratch(folder)
