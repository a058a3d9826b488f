"""A run tells its caller what it is doing as it goes (RunContext.on_event, RunProgress), and
`refinegraph run` shows it as one status line on a terminal, nothing otherwise."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest
from rich.console import Console
from typer.testing import CliRunner

from refinegraph import run
from refinegraph.cli.app import app
from refinegraph.config import Config, ModelSpec, RetryPolicy
from refinegraph.models import ScriptedModel
from refinegraph.progress import RunProgress

from conftest import verdict


class _Snapshots:
    """Listener that keeps (active nodes, calls, tokens, retrying) after each event."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[str, ...], int, int, str | None]] = []

    def __call__(self, progress: RunProgress) -> None:
        self.seen.append((tuple(progress.active), progress.model_calls, progress.tokens, progress.retrying))


async def test_progress_follows_nodes_calls_and_tokens(make_scripted):
    model = make_scripted([verdict(9, done=True)])
    progress, snapshots = RunProgress(), _Snapshots()
    progress.listeners.append(snapshots)
    result = await run("self-refine", "What is 2+3?", models={"local": model}, on_event=progress)
    nodes = [active[-1] for active, *_ in snapshots.seen if active]
    assert nodes[0] == "solver" and "critic" in nodes and nodes[-1] == "finish"
    calls = [c for _, c, _, _ in snapshots.seen]
    assert calls == sorted(calls) and calls[-1] == result.model_calls == 2
    assert progress.tokens == result.usage["total_tokens"] > 0
    assert progress.active == [] and "calls 2" in progress.line()


class _DeadThenAlive(ScriptedModel):
    """A model whose server refuses the first connection, then answers."""

    backend = "openai"

    def __init__(self) -> None:
        super().__init__(["5"], name="flaky")
        self.failures = 1

    async def sample(self, messages, **kwargs):
        if self.failures:
            self.failures -= 1
            raise openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:9/v1/chat"))
        return await super().sample(messages, **kwargs)


async def test_a_retry_names_the_model_as_it_happens():
    config = Config(models={"flaky": ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1", model="m",
                                               retry=RetryPolicy(max_retries=2, initial_wait_s=0, max_wait_s=0))},
                    roles={"solver": "flaky"})
    progress, snapshots = RunProgress(), _Snapshots()
    progress.listeners.append(snapshots)
    await run("greedy", "2+3?", config=config, models={"flaky": _DeadThenAlive()}, on_event=progress)
    retrying = [r for *_, r in snapshots.seen if r]
    assert retrying and retrying[0].startswith("flaky: APIConnectionError, attempt 1")
    assert progress.retries == 1 and progress.retrying is None  # cleared by the call that succeeded


async def test_a_failing_hook_never_breaks_the_run(store):
    def broken(event):
        raise RuntimeError("display gone")

    result = await run("greedy", "2+3?", models={"local": ScriptedModel(["5"], name="local")}, on_event=broken,
                       store=store)
    assert result.answer == "5"
    fallbacks = store.events(result.run_id, types={"fallback"})
    assert [f["kind"] for f in fallbacks] == ["event_hook"] and "display gone" in fallbacks[0]["detail"]


def _cli_run(monkeypatch, *args: str, terminal: bool = True) -> tuple[object, str]:
    """`refinegraph run greedy ...` on a scripted model, stderr's console a terminal (or the
    test runner's captured stderr); what the terminal received."""
    import refinegraph.cli.status as status
    import refinegraph.runner as runner

    screen = io.StringIO()
    if terminal:
        monkeypatch.setattr(status, "err", Console(file=screen, force_terminal=True, width=120))
    real_run = runner.run

    async def scripted(graph, task=None, **kw):
        return await real_run(graph, task, **kw, models={"local": ScriptedModel(["5"], name="local")})

    monkeypatch.setattr(runner, "run", scripted)
    result = CliRunner().invoke(app, ["run", "greedy", "2+3?", *args])
    assert result.exit_code == 0, result.output
    return result, screen.getvalue()


def test_cli_status_line_on_a_terminal(monkeypatch):
    _, shown = _cli_run(monkeypatch)
    assert "node" in shown and "calls 1" in shown


def test_cli_no_status_line_with_json(monkeypatch):
    result, shown = _cli_run(monkeypatch, "--json")
    assert shown == ""
    assert json.loads(result.stdout)["answer"] == "5"


def test_cli_no_status_line_when_stderr_is_not_a_terminal(monkeypatch):
    result, _ = _cli_run(monkeypatch, terminal=False)
    (line,) = result.stderr.splitlines()  # the summary line only
    assert line.startswith("stop: done  calls: 1  tokens: ")


@pytest.mark.parametrize("as_json", [False, True])
def test_status_line_is_wanted_only_on_a_terminal_without_json(monkeypatch, as_json):
    import refinegraph.cli.status as status

    monkeypatch.setattr(status, "err", Console(file=io.StringIO(), force_terminal=True))
    assert status.wanted(as_json) is (not as_json)
