"""A (weighted) vote over answer keys, with one documented tie rule.

The one vote of the project: answers by their projected keys (tools.answers), SQL
candidates by their execution results' keys (tools.sql.vote). Samples whose key is None
(no answer could be read, the SQL failed) abstain. Groups rank by total weight
(a plain vote weighs each sample 1), then by first appearance: among tied groups the one
whose first member came earliest wins. Callers put samples in a meaningful order (sample
order, or models ranked strongest first), so the outcome is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Group:
    key: str
    members: list[int] = field(default_factory=list)
    weight: float = 0.0

    @property
    def votes(self) -> int:
        return len(self.members)


@dataclass
class VoteOutcome:
    """Groups (best first), abstaining samples, and what the vote says about agreement."""

    groups: list[Group]
    abstained: list[int]
    total: int
    total_weight: float

    @property
    def winner(self) -> Group | None:
        return self.groups[0] if self.groups else None

    @property
    def runner_up(self) -> Group | None:
        return self.groups[1] if len(self.groups) > 1 else None

    @property
    def unanimous(self) -> bool:
        """One group only (abstentions aside)."""
        return len(self.groups) == 1

    @property
    def tied(self) -> bool:
        return len(self.groups) > 1 and abs(self.groups[0].weight - self.groups[1].weight) < 1e-12

    @property
    def agreement(self) -> float:
        """The winner's share of all weight cast, abstentions included (0 when none)."""
        return self.winner.weight / self.total_weight if self.winner and self.total_weight else 0.0

    @property
    def counts(self) -> list[int]:
        return [g.votes for g in self.groups]

    def as_event(self) -> dict[str, Any]:
        """The payload of a `vote` event."""
        groups = [{"key": g.key, "members": g.members, "votes": g.votes, "weight": round(g.weight, 6)}
                  for g in self.groups]
        return {"groups": groups, "failed": self.abstained, "winner": self.winner.key if self.winner else None,
                "agreement": round(self.agreement, 4), "tie": self.tied}


def majority_vote(keys: Sequence[str | None], weights: Sequence[float] | None = None) -> VoteOutcome:
    """Group equal keys, sum their weights, rank (see the module docstring)."""
    if weights is not None and len(weights) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(weights)} weights")
    groups: dict[str, Group] = {}
    abstained = []
    total_weight = 0.0
    for index, key in enumerate(keys):
        weight = 1.0 if weights is None else float(weights[index])
        total_weight += weight
        if key is None:
            abstained.append(index)
            continue
        group = groups.setdefault(key, Group(key))
        group.members.append(index)
        group.weight += weight
    ranked = sorted(groups.values(), key=lambda g: (-g.weight, g.members[0]))
    return VoteOutcome(ranked, abstained, len(keys), total_weight)
