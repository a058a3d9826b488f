"""Voting on what the database said: candidates whose results are the same set of rows
form one group; failed candidates get no vote.

Tie rule (CSC-SQL's public code picks the same group twice on a tie; we do not): among
groups with the most votes, the winner is the group whose first member came earliest in
the candidates' order. Callers put candidates in a meaningful order (sample order, or
systems ranked by a prior), so the rule is deterministic and documented.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refinegraph.tools.sql.compare import result_key
from refinegraph.tools.sql.engines import ExecResult


@dataclass
class VoteGroup:
    key: str
    members: list[int] = field(default_factory=list)

    @property
    def votes(self) -> int:
        return len(self.members)


@dataclass
class SqlVote:
    """The vote's groups (most votes first, ties by first appearance) and its outcome."""

    groups: list[VoteGroup]
    failed: list[int]
    candidates: int

    @property
    def winner(self) -> VoteGroup | None:
        return self.groups[0] if self.groups else None

    @property
    def runner_up(self) -> VoteGroup | None:
        return self.groups[1] if len(self.groups) > 1 else None

    @property
    def unanimous(self) -> bool:
        return len(self.groups) == 1

    @property
    def tied(self) -> bool:
        return len(self.groups) > 1 and self.groups[0].votes == self.groups[1].votes

    @property
    def agreement(self) -> float:
        """Share of all candidates (failed ones included) behind the winner."""
        return self.winner.votes / self.candidates if self.winner and self.candidates else 0.0


def vote_on_results(results: list[ExecResult]) -> SqlVote:
    """Group candidates by result; rank groups by votes, then by first appearance."""
    groups: dict[str, VoteGroup] = {}
    failed = []
    for index, result in enumerate(results):
        if not result.ok:
            failed.append(index)
            continue
        key = result_key(result.rows)
        groups.setdefault(key, VoteGroup(key)).members.append(index)
    ranked = sorted(groups.values(), key=lambda g: (-g.votes, g.members[0]))
    return SqlVote(ranked, failed, len(results))
