"""`refinegraph bench reliability|overhead|throughput|vllm|batch`: the harnesses of a checkout.

The reliability and performance harnesses are not installed with the package: they live in
`benchmarks/` at the top of the repository and run as `python -m benchmarks ...`. From a
checkout (an editable install), `refinegraph bench NAME` finds that folder beside the package
and hands it the command line as given; anywhere else it says where the harnesses are.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import typer

PACKAGE = "benchmarks"

HARNESSES = {
    "overhead": "Self-Refine on an instant model: bare LangGraph vs refinegraph, tracing off and on.",
    "throughput": "Runs per second at 32 concurrent runs of an instant model: bare LangGraph, no trace, "
                  "the default path on SQLite (and PostgreSQL).",
    "vllm": "vLLM's engine in-process and vLLM's server (load time, tokens/s, memory), llama.cpp beside.",
    "reliability": "Faults, crashes and hostile input: every run answered or a typed error, traces verified, "
                   "nothing lost.",
    "proxy": "greedy:UPSTREAM through `refinegraph serve` vs straight to the upstream (a scripted stub): "
             "added latency at p50/p99 and the throughput ratio",
    "batch": "`refinegraph batch` vs a raw asyncio openai load of the same requests, on the embedded "
             "llama.cpp server.",
}
"""The commands forwarded to `python -m benchmarks`, with the one-line help `refinegraph bench
--help` shows without importing them."""


class HarnessMissing(RuntimeError):
    """This installation has no `benchmarks/` beside it (not a checkout)."""


def checkout_harness() -> Path | None:
    """`benchmarks/` of the checkout the package was installed from, if there is one."""
    import refinegraph

    root = Path(refinegraph.__file__).resolve().parent.parent
    folder = root / PACKAGE
    if (root / "pyproject.toml").is_file() and (folder / "cli.py").is_file():
        return folder
    return None


def import_benchmarks(folder: Path) -> ModuleType:
    """The `benchmarks` package in `folder`, imported by its path (so the checkout's root, with
    its top-level role folders, never goes on sys.path); once imported, the same module."""
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None:
        if Path(loaded.__file__ or "").resolve() != (folder / "__init__.py").resolve():
            raise HarnessMissing(f"another package named {PACKAGE!r} is imported ({loaded.__file__}), not "
                                 f"{folder}; run `python -m benchmarks ...` at the root of the checkout")
        return loaded
    spec = importlib.util.spec_from_file_location(PACKAGE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None  # a file location always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module


def load_harness(command: str) -> ModuleType:
    """`benchmarks.cli` of the checkout the package runs from, or HarnessMissing saying what to run."""
    folder = checkout_harness()
    if folder is None:
        raise HarnessMissing(
            f"`refinegraph bench {command}` runs a harness that is not installed with the package: it lives in "
            f"benchmarks/ of a checkout of the repository. In a checkout, install refinegraph from it "
            f"(pip install -e .) and run `python -m benchmarks {command} ...` at its root (or this command).")
    import_benchmarks(folder)
    return importlib.import_module(f"{PACKAGE}.cli")


def forwarder(command: str):
    """A `refinegraph bench COMMAND` that runs `python -m benchmarks COMMAND` with the same arguments."""

    def forward(ctx: typer.Context) -> None:
        from refinegraph.cli.common import fail

        try:
            harness = load_harness(command)
        except HarnessMissing as exc:
            fail(str(exc))
        harness.app(args=[command, *ctx.args], prog_name="refinegraph bench")

    forward.__name__ = f"{command}_cmd"
    return forward


def register(app: typer.Typer) -> None:
    """The harness commands on the `bench` group: their options and help are the harness's own
    (`refinegraph bench NAME --help` shows them)."""
    for command, summary in HARNESSES.items():
        app.command(command, help=f"{summary} (harness: python -m benchmarks {command})",
                    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                    add_help_option=False)(forwarder(command))
