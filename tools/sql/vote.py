"""Voting on what the database said: the one vote of refinegraph.tools.voting over the
candidates' result keys (compare.result_key: the same set of rows, the same key); a failed
candidate has no key and abstains.

The tie rule is that vote's: among groups with the most votes, the one whose first member
came earliest in the candidates' order wins (CSC-SQL's public code picks the same group
twice on a tie; we do not). Callers put candidates in a meaningful order (sample order,
or systems ranked by a prior), so the outcome is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

from refinegraph.tools.sql.compare import result_key
from refinegraph.tools.sql.engines import ExecResult
from refinegraph.tools.voting import Group, VoteOutcome, majority_vote

SqlVote = VoteOutcome
"""The SQL vote is the one vote; its former names stay for callers."""
VoteGroup = Group


def result_keys(results: Sequence[ExecResult]) -> list[str | None]:
    """Each result's key (None for a failed execution: it abstains)."""
    return [result_key(result.rows) if result.ok else None for result in results]


def vote_on_results(results: Sequence[ExecResult]) -> VoteOutcome:
    """Group candidates by result; rank groups by votes, then by first appearance."""
    return majority_vote(result_keys(results))
