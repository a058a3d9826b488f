"""Every registered graph keeps the graph contract (refinegraph.registry's docstring): it
declares a params model that refuses unknown parameters, and a run on a scripted model (a
test double) sets the required state keys and emits the required events, whether it ends
on its own rule or because the budget refused a call."""

from __future__ import annotations

import sqlite3

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from refinegraph import Budget, list_graphs, run
from refinegraph.models import ScriptedModel
from refinegraph.registry import (
    BUDGET_STOP,
    REQUIRED_OUTPUTS,
    ContractViolation,
    GraphSpec,
    check_final_state,
    get_graph,
    register_graph,
)

REPLY = """Step 1: 2 + 3 = 5.
```sql
SELECT COUNT(*) FROM singer;
```
```python
def add(a, b):
    return a + b
```
The answer is 5."""

GRAPHS = [spec.name for spec in list_graphs()]


@pytest.fixture
def db(tmp_path) -> str:
    path = tmp_path / "tiny.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO singer (name) VALUES (?)", [("Ann",), ("Bo",)])
    conn.close()
    return str(path)


def graph_input(spec: GraphSpec, db: str) -> dict[str, str]:
    """An input for any graph, from what its spec says it reads."""
    given = {"question": "How many singers are there?", "task": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n",
             "db": db, "tests": "assert add(2, 3) == 5", "entry_point": "add"}
    return {key: given[key] for key in (spec.input_key, *spec.reads) if key in given}


def test_there_are_graphs_to_check():
    assert {"greedy", "self-refine", "sql-sc", "acar", "code-filter"} <= set(GRAPHS)


@pytest.mark.parametrize("name", GRAPHS)
def test_params_model_is_declared_and_refuses_unknown_parameters(name):
    spec = get_graph(name)
    assert issubclass(spec.params, BaseModel)
    assert spec.params.model_config.get("extra") == "forbid"
    assert spec.validate_params({}) == spec.params().model_dump()
    with pytest.raises(ValidationError):
        spec.build({"no_such_parameter": 1})


@pytest.mark.parametrize("name", GRAPHS)
async def test_a_run_keeps_the_contract(name, store, db):
    spec = get_graph(name)
    result = await run(name, graph_input(spec, db), store=store, models={"local": ScriptedModel(lambda m: REPLY)})
    assert result.error is None
    check_final_state(spec, result.state, store.events(result.run_id))
    assert result.stop_reason == result.state["stop_reason"] and result.answer == result.state["answer"]


@pytest.mark.parametrize("name", GRAPHS)
async def test_a_budget_stop_keeps_the_contract(name, store, db):
    spec = get_graph(name)
    result = await run(name, graph_input(spec, db), store=store, budget=Budget(max_calls=0),
                       models={"local": ScriptedModel(lambda m: REPLY)})
    assert result.stop_reason == BUDGET_STOP and result.error is None
    assert "budget_unhandled" not in result.fallbacks  # the graph handled the refusal itself
    check_final_state(spec, result.state, store.events(result.run_id))


def test_register_refuses_a_params_model_that_accepts_anything():
    class Loose(BaseModel):
        n: int = 1

    class Required(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int

    with pytest.raises(ContractViolation, match="forbid unknown fields"):
        register_graph("loose", lambda params=None, *, checkpointer=None: None, "x", params=Loose)
    with pytest.raises(ContractViolation, match="without a default: n"):
        register_graph("required", lambda params=None, *, checkpointer=None: None, "x", params=Required)


def test_check_final_state_names_what_is_missing():
    spec = GraphSpec("plain", get_graph("greedy").build, "x", get_graph("greedy").params)
    events = [{"type": "node_started"}, {"type": "node_finished"}, {"type": "stop", "reason": "done"}]
    check_final_state(spec, {"answer": "5", "stop_reason": "done"}, events)
    with pytest.raises(ContractViolation, match="without setting stop_reason"):
        check_final_state(spec, {"answer": "5"}, events)
    with pytest.raises(ContractViolation, match="no stop event"):
        check_final_state(spec, {"answer": "5", "stop_reason": "done"}, events[:2])
    with pytest.raises(ContractViolation, match="last stop event"):
        check_final_state(spec, {"answer": "5", "stop_reason": "budget"}, events)
    assert REQUIRED_OUTPUTS == ("answer", "stop_reason")
