"""The resource limits a sandboxed program runs under, and the launcher that sets them.

The launcher (launcher.py, its text passed to `python -c`) is run by the sandbox's own
interpreter: it runs the program as its child under the rlimits, so they hold for the program
and everything it starts, and kills whatever the program leaves behind
(setsid() escapees too: it is their subreaper). Nothing of refinegraph is loaded in it.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MIB = 1 << 20
PROGRAM = "main.py"
"""The program's file name in the work folder."""

LAUNCHER = Path(__file__).with_name("launcher.py").read_text(encoding="utf-8")


class Limits(BaseModel):
    """What one run may use. RLIMIT_NPROC counts processes per (user namespace, uid), and
    never for uid 0: the sandbox runs as an unprivileged uid when refinegraph is root."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(5.0, gt=0, le=3600)
    """Wall clock; the CPU-time limit is this rounded up, plus one second."""
    memory_mb: int = Field(256, ge=16)
    """Address space of each process (RLIMIT_AS)."""
    max_output_bytes: int = Field(64_000, ge=1)
    """Of stdout and of stderr, each; more stops the program."""
    max_processes: int = Field(16, ge=1)
    """Processes of the sandbox user, counting the launcher and bwrap's init (RLIMIT_NPROC)."""
    file_size_mb: int = Field(16, ge=1)
    """Largest file the program may write (RLIMIT_FSIZE)."""
    open_files: int = Field(64, ge=16)
    tmpfs_mb: int = Field(64, ge=1)
    """Size of the private /tmp and /dev/shm under bwrap."""

    @property
    def cpu_s(self) -> int:
        """CPU seconds per process (RLIMIT_CPU's soft limit): past the wall clock, so a
        single-threaded program meets the wall clock first."""
        return math.ceil(self.timeout_s) + 1

    def rlimits(self) -> list[tuple[str, int, int]]:
        """(name, soft, hard) for the launcher; CPU's hard limit a second after its soft one
        (SIGXCPU, then SIGKILL)."""
        cpu = self.cpu_s
        memory = self.memory_mb * MIB
        return [("AS", memory, memory), ("CPU", cpu, cpu + 1), ("FSIZE", self.file_size_mb * MIB,
                self.file_size_mb * MIB), ("NOFILE", self.open_files, self.open_files),
                ("NPROC", self.max_processes, self.max_processes), ("CORE", 0, 0)]


def launcher_argv(python: str, limits: Limits, program: str = PROGRAM,
                  user: tuple[int, int] | None = None) -> list[str]:
    """The command that runs `program` under `limits` (the launcher without site or env), as
    `user` (uid, gid) where given: the launcher then must start as root."""
    spec = ",".join(f"{name}:{soft}:{hard}" for name, soft, hard in limits.rlimits())
    return [python, "-E", "-S", "-c", LAUNCHER, spec, program, f"{user[0]}:{user[1]}" if user else "-"]
