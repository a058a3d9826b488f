"""When to stop sampling: Adaptive-Consistency's posterior rules and ESC's window rule.

- "beta": the two leading answers' counts v1 >= v2 give p1/(p1+p2) ~ Beta(v1+1, v2+1);
  stop when P(p1 > p2) = P(Beta > 1/2) reaches the threshold. For integer parameters this
  is exactly P(Binomial(v1+v2+1, 1/2) <= v1), computed without sampling.
- "dirichlet": all answers' counts give p ~ Dirichlet(counts + 1); stop when P(the
  leader's p is the largest) reaches the threshold (Monte Carlo with a fixed seed, so the
  same counts always give the same decision).
- "esc": Early-Stopping SC: stop at the first window whose answers all agree.

Abstaining samples (no readable answer) count toward N but toward no answer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StopCheck:
    stop: bool
    posterior: float | None
    rule: str


def beta_posterior(top: int, second: int) -> float:
    """P(p_top > p_second) under Beta(top+1, second+1), exact."""
    n = top + second + 1
    return sum(math.comb(n, k) for k in range(top + 1)) / 2 ** n


def dirichlet_posterior(counts: Sequence[int], draws: int = 4000, seed: int = 0) -> float:
    """P(the first count's share is the largest) under Dirichlet(counts + 1)."""
    if len(counts) < 2:
        return beta_posterior(counts[0] if counts else 0, 0)
    rng = random.Random(seed)
    wins = 0
    for _ in range(draws):
        shares = [rng.gammavariate(c + 1, 1.0) for c in counts]
        wins += shares[0] >= max(shares)
    return wins / draws


def posterior_check(counts: Sequence[int], threshold: float, rule: str = "beta") -> StopCheck:
    """Stop when the leader is the majority with posterior probability >= threshold.

    `counts` are the answer groups' sizes, largest first."""
    if not counts:
        return StopCheck(False, 0.0, rule)
    if rule == "beta":
        posterior = beta_posterior(counts[0], counts[1] if len(counts) > 1 else 0)
    elif rule == "dirichlet":
        posterior = dirichlet_posterior(counts)
    else:
        raise ValueError(f"unknown stopping rule {rule!r}")
    return StopCheck(posterior >= threshold, round(posterior, 6), rule)


def window_check(window: Sequence[str | None]) -> StopCheck:
    """ESC: stop when every answer of the latest window is the same (and readable)."""
    agreed = bool(window) and window[0] is not None and all(k == window[0] for k in window)
    return StopCheck(agreed, None, "esc")
