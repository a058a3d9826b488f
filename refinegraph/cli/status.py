"""The status line of a command that runs a graph: on a terminal, one line on stderr that
follows the run's events (node, calls made, tokens spent, a retry against a failing model as
it happens), gone when the run ends. Nothing when stderr is not a terminal or with --json."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.markup import escape

from refinegraph.cli.common import err

if TYPE_CHECKING:
    from refinegraph.progress import RunProgress


def wanted(as_json: bool) -> bool:
    """A status line only for a person watching: stderr a terminal, and no --json."""
    return not as_json and err.is_terminal


@contextlib.contextmanager
def status_line(as_json: bool) -> Iterator[RunProgress | None]:
    """The run's `on_event` hook, shown as a live line on stderr while the block runs; None
    (no hook, no output) when the line is not wanted."""
    if not wanted(as_json):
        yield None
        return
    from refinegraph.progress import RunProgress

    progress = RunProgress()
    with err.status(escape(progress.line()), spinner="dots") as shown:
        progress.listeners.append(lambda p: shown.update(escape(p.line())))
        yield progress
