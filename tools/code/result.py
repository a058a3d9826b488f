"""What a sandboxed run returns: one typed result, whatever the program did."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Status = Literal["ok", "error", "timeout", "memory", "output_limit", "killed", "sandbox_unavailable"]
"""ok: exit 0. error: a nonzero exit (an exception). timeout: stopped at the wall-clock limit or
by its CPU-time limit. memory: out of its address-space limit (MemoryError, ENOMEM). output_limit:
stopped for writing more than max_output_bytes. killed: ended by a signal we did not send (a
segfault, the kernel). sandbox_unavailable: nothing ran (isolation "auto" or "strict" without a
working bubblewrap: the message names the package to install)."""

Isolation = Literal["bwrap", "rlimits", "none"]
"""bwrap: bubblewrap namespaces plus rlimits; rlimits: unisolated, asked for by name (rlimits, a
cleared environment and its own folder only); none: nothing ran."""


class CodeResult(BaseModel):
    """How one program ended, and why, in words (`message`).

    Paths of the work folder read `/tmp/work` in both isolations, so a program that
    behaves the same prints the same text (and digest) from run to run.
    """

    status: Status
    isolation: Isolation
    message: str
    exit_code: int | None = None
    signal: int | None = None
    """The signal that ended the program (bwrap reports it as exit code 128 + N)."""
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0
    isolation_note: str = ""
    """For a program that ran unisolated (isolation "rlimits"): what that leaves open, beginning
    "unisolated"; else empty."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def isolated(self) -> bool:
        """Whether the program ran inside bubblewrap's namespaces."""
        return self.isolation == "bwrap"
