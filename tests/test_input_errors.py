"""A bad input file is named with the line (and column) where it goes wrong."""

from __future__ import annotations

from typer.testing import CliRunner

from refinegraph.cli.app import app

runner = CliRunner()


def test_bad_messages_file_names_file_line_and_column(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text('[\n  {"role": "user", "content": "hi"},\n  {"role": x}\n]\n')
    result = runner.invoke(app, ["run", "greedy", "--messages", str(path)])
    assert result.exit_code == 2
    assert f"--messages {path}:3:12: not JSON: Expecting value" in " ".join(result.output.split())


def test_bad_config_names_file_and_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[models.local]\nbackend = "local"\nn_parallel = \n')
    result = runner.invoke(app, ["run", "greedy", "x", "--config", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output and "line 3" in result.output


def test_bad_batch_input_names_file_and_line(tmp_path):
    path = tmp_path / "inputs.jsonl"
    path.write_text('"a task"\n{"task": "b"}\n{bad json\n')
    result = runner.invoke(app, ["batch", str(path), "--graph", "greedy", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{path}:3:" in " ".join(result.output.split())
