"""Who a sandboxed program runs as, and with which Python.

RLIMIT_NPROC is not enforced for uid 0 (even as root of a user namespace, which still
maps to the host's root), so when refinegraph runs as root the program runs as the
unprivileged `nobody` (65534) instead; that user must be able to reach the interpreter,
so a Python inside a folder only root may enter (pyenv under /root) is replaced by the
system's python3. As any other user the program keeps that user's uid and this Python.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNPRIVILEGED = "nobody"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    python: str
    switch: bool
    """Whether the child changes to `uid` (refinegraph runs as root)."""

    def popen_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []} if self.switch else {}

    def give(self, path: Path) -> None:
        """Make `path` the sandbox user's (the work folder and the files put in it)."""
        if self.switch:
            os.chown(path, self.uid, self.gid)


def reachable_by_others(path: str) -> bool:
    """Whether a user with no special rights can execute `path` (every folder above it
    searchable by others, the file executable by others)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)
    except OSError:
        return False


def sandbox_identity() -> Identity | str:
    """The identity to run as, or why there is none."""
    if os.geteuid() != 0:
        return Identity(os.getuid(), os.getgid(), sys.executable, switch=False)
    try:
        entry = pwd.getpwnam(UNPRIVILEGED)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid = gid = 65534
    candidates = [sys.executable, shutil.which("python3", path=SYSTEM_PATH)]
    for python in candidates:
        if python and reachable_by_others(python):
            return Identity(uid, gid, python, switch=True)
    return (f"running as root, the sandbox runs programs as uid {uid}, which can reach no Python "
            f"(tried {', '.join(c for c in candidates if c)}); install python3 in /usr/bin")
