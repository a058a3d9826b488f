"""The resource limits a sandboxed program runs under, and the launcher that sets them.

The launcher is a few lines run by the sandbox's own interpreter: it sets the rlimits
on itself and execs the program, so they hold for the program and everything it
starts, and nothing of refinegraph is loaded in the child.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

MIB = 1 << 20
PROGRAM = "main.py"
"""The program's file name in the work folder."""

LAUNCHER = (
    "import os, resource, sys\n"
    "for limit in sys.argv[1].split(','):\n"
    "    name, soft, hard = limit.split(':')\n"
    "    resource.setrlimit(getattr(resource, 'RLIMIT_' + name), (int(soft), int(hard)))\n"
    "os.execv(sys.executable, [sys.executable, '-E', '-s', '-B', sys.argv[2]])\n"
)


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
    """Processes of the sandbox user, counting bwrap's init (RLIMIT_NPROC)."""
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


def launcher_argv(python: str, limits: Limits, program: str = PROGRAM) -> list[str]:
    """The command that runs `program` under `limits` (the launcher without site or env)."""
    spec = ",".join(f"{name}:{soft}:{hard}" for name, soft, hard in limits.rlimits())
    return [python, "-E", "-S", "-c", LAUNCHER, spec, program]
