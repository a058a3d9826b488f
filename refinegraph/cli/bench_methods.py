"""Placeholder: filled in by the method-library work (issue 3)."""

from refinegraph.cli.bench_cmds import app  # noqa: F401  (commands register on the bench app)
