"""A run's budget (tokens, calls, wall seconds) and the typed error when it would be exceeded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


class BudgetExceeded(Exception):
    """Raised by the choke point instead of a call that would go past the budget.

    Graphs catch it, stop, and return the best answer so far with stop_reason="budget".
    """

    def __init__(self, reason: str, spent: dict[str, Any], limits: dict[str, Any]):
        super().__init__(f"budget exhausted: {reason}")
        self.reason, self.spent, self.limits = reason, spent, limits


# By default a call is refused when fewer than this many completion tokens would remain
# for each sample (a node may ask for more, see RunContext.sample's min_tokens).
MIN_COMPLETION_TOKENS = 8


@dataclass
class Budget:
    """Limits (None = unlimited) and what has been spent against them."""

    max_tokens: int | None = None
    max_calls: int | None = None
    max_seconds: float | None = None
    max_tokens_per_call: int | None = None
    """The longest generation any one call may ask for (a proxied request's OpenAI
    `max_tokens`): it lowers every call's max_tokens, as optillm passes it to each call."""
    tokens: int = 0
    calls: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        for label, value in (("tokens", self.max_tokens), ("calls", self.max_calls), ("seconds", self.max_seconds)):
            if value is not None and value < 0:
                raise ValueError(f"a budget of {label} cannot be negative (got {value})")
        if self.max_tokens_per_call is not None and self.max_tokens_per_call < 1:
            raise ValueError(f"max_tokens_per_call must be at least 1 (got {self.max_tokens_per_call})")

    def limits(self) -> dict[str, Any]:
        """The limits, as run_started records them (`max_` + key rebuilds the Budget)."""
        limits = {"tokens": self.max_tokens, "calls": self.max_calls, "seconds": self.max_seconds}
        if self.max_tokens_per_call is not None:
            limits["tokens_per_call"] = self.max_tokens_per_call
        return limits

    def per_call(self, max_tokens: int) -> int:
        """`max_tokens` within the per-call ceiling."""
        cap = self.max_tokens_per_call
        return max_tokens if cap is None else min(max_tokens, cap)

    def spent(self) -> dict[str, Any]:
        """Tokens and calls spent: what decides a refusal and replays exactly (wall time,
        which no replay reproduces, is reported apart by `elapsed`)."""
        return {"tokens": self.tokens, "calls": self.calls}

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def admit(self, n: int, max_tokens: int, prompt_estimate: int,
              min_tokens: int = MIN_COMPLETION_TOKENS) -> int:
        """The max_tokens a call of n samples may use, or BudgetExceeded.

        The prompt's size is estimated before the call (about 4 characters a token) so
        that the completion can be capped to what remains; the server's real count is
        charged afterwards, so a run can overshoot by at most one prompt's estimate error.
        """
        if self.max_calls is not None and self.calls + 1 > self.max_calls:
            raise BudgetExceeded("calls", self.spent(), self.limits())
        if self.max_seconds is not None and time.monotonic() - self.started >= self.max_seconds:
            raise BudgetExceeded("seconds", self.spent(), self.limits())
        if self.max_tokens is None:
            return max_tokens
        remaining = self.max_tokens - self.tokens - prompt_estimate
        per_sample = remaining // max(n, 1)
        if per_sample < min_tokens:
            raise BudgetExceeded("tokens", self.spent(), self.limits())
        return min(max_tokens, per_sample)

    def charge(self, tokens: int, calls: int = 1) -> None:
        self.tokens += tokens
        self.calls += calls
