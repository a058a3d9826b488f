"""The bubblewrap command line: which namespaces, mounts and environment a program gets.

- `/` a read-only bind of the host's root; `/tmp`, `/dev/shm` and `/run` private tmpfs
  (so unix sockets under /run, PostgreSQL's among them, are out of reach); `/home` and
  $HOME empty tmpfs; a minimal /dev; the work folder, read-write, at /tmp/work.
- every namespace of its own (--unshare-all): pid (its own /proc), network (nothing but
  its own loopback: the host's 127.0.0.1 is unreachable), user, ipc, uts, cgroup.
- only PATH, HOME, LANG and TMPDIR in its environment (--clearenv); no capabilities.

--die-with-parent and the pid namespace mean that killing bwrap kills every process
the program started; --new-session keeps it off the caller's terminal.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from refinegraph.tools.code.identity import SYSTEM_PATH, Identity
from refinegraph.tools.code.limits import MIB, Limits, launcher_argv
from refinegraph.tools.code.workdir import remove

WORK_DIR = "/tmp/work"
"""Where the work folder appears inside the sandbox (and in every result's text)."""
PRIVATE = ("/tmp", "/dev/shm", "/run")


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def environment(home: str) -> dict[str, str]:
    """All the environment a program gets: nothing of the caller's (no keys, no tokens)."""
    return {"PATH": SYSTEM_PATH, "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def _hidden_homes() -> list[str]:
    homes = [Path("/home"), Path.home()]
    return sorted({str(h) for h in homes if str(h) != "/" and h.is_dir()})


def _rebinds(identity: Identity, hidden: list[str]) -> list[str]:
    """Folders of the interpreter that lie in a hidden home: bound back, read-only."""
    python = Path(os.path.realpath(identity.python))
    wanted = {str(python.parent.parent)}
    if identity.python == sys.executable:
        wanted |= {sys.prefix, sys.base_prefix}
    return sorted(p for p in wanted if any(p == h or p.startswith(h.rstrip("/") + "/") for h in hidden))


def bwrap_argv(bwrap: str, workdir: str, identity: Identity, limits: Limits) -> list[str]:
    """The whole command: bwrap's options, then the launcher that sets the rlimits."""
    size = str(limits.tmpfs_mb * MIB)
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for path in PRIVATE:
        argv += ["--size", size, "--tmpfs", path]
    if os.path.isdir("/var/run") and not os.path.islink("/var/run"):
        argv += ["--size", size, "--tmpfs", "/var/run"]
    hidden = _hidden_homes()
    for path in hidden:
        argv += ["--tmpfs", path]
    for path in _rebinds(identity, hidden):
        argv += ["--ro-bind", path, path]
    argv += ["--bind", workdir, WORK_DIR, "--chdir", WORK_DIR,
             "--unshare-all", "--die-with-parent", "--new-session", "--hostname", "sandbox",
             "--cap-drop", "ALL", "--clearenv"]
    for key, value in environment(WORK_DIR).items():
        argv += ["--setenv", key, value]
    return argv + ["--", *launcher_argv(identity.python, limits)]


@functools.cache
def probe(bwrap: str, identity: Identity) -> str | None:
    """None when bwrap can start a sandbox here (user namespaces allowed, the interpreter
    reachable inside), else why not. Checked once per process."""
    workdir = tempfile.mkdtemp(prefix="refinegraph-probe-")
    try:
        identity.give(Path(workdir))
        program = Path(workdir) / "main.py"
        program.write_text("import resource\n")
        identity.give(program)
        argv = bwrap_argv(bwrap, workdir, identity, Limits(timeout_s=10))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=environment(WORK_DIR),
                              **identity.popen_kwargs())
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        remove(Path(workdir))
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return f"bwrap exited {done.returncode}: {lines[-1] if lines else 'no message'}"
    return None
