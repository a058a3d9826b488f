"""What a run is doing, folded from its events as they are written: the node it is in, the
model calls made, the tokens spent and the retries against a model that fails.

Pass a RunProgress as the run's `on_event` (`refinegraph.run(..., on_event=progress)`) and
read it, or give it listeners that are called after each event. `refinegraph run` and
`refinegraph sql` show its `line()` as a status line on a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunProgress:
    """The run's state so far; call it with each event (it is an `on_event` hook)."""

    active: list[str] = field(default_factory=list)
    """The nodes running now, in the order they started (parallel branches run at once)."""
    model_calls: int = 0
    """Requests sent to a backend (calls served from a resumed run's trace are not counted)."""
    tokens: int = 0
    """Prompt and completion tokens of those requests."""
    retries: int = 0
    retrying: str | None = None
    """The last failure being retried ("local: ConnectError, attempt 2, again in 4.0 s"),
    until a call succeeds."""
    listeners: list[Callable[[RunProgress], None]] = field(default_factory=list)

    def __call__(self, event: Any) -> None:
        kind = event.type
        if kind == "node_started" and event.node:
            self.active.append(event.node)
        elif kind == "node_finished" and event.node in self.active:
            self.active.remove(event.node)
        elif kind == "llm_call":
            if event.source == "backend":
                self.model_calls += event.requests
                self.tokens += event.prompt_tokens + event.completion_tokens
            self.retrying = None
        elif kind == "retry":
            self.retries += 1
            what = "" if event.request == "completion" else f" ({event.request})"
            self.retrying = (f"{event.model}{what}: {event.error_class}, attempt {event.attempt}, "
                             f"again in {event.wait_s:.1f} s")
        else:
            return
        for listener in self.listeners:
            listener(self)

    @property
    def node(self) -> str | None:
        """The node that started last of those still running."""
        return self.active[-1] if self.active else None

    def line(self) -> str:
        """One status line: `node critic  calls 3  tokens 1,204  retrying local: ...`."""
        nodes = ", ".join(dict.fromkeys(self.active)) or "-"
        text = f"node {nodes}  calls {self.model_calls}  tokens {self.tokens:,}"
        return f"{text}  retrying {self.retrying}" if self.retrying else text
