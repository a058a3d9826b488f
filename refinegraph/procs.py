"""Local processes the benchmarks and helpers start: a free loopback port, how much
memory a process and its children hold, waiting for a server to answer, and stopping it
with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

LEFTOVER_GRACE_S = 5.0
"""How long a stopped group leader's children get to exit before they are killed."""


class ProcessExited(RuntimeError):
    """The process exited while it was awaited; `returncode` is its exit status."""

    def __init__(self, returncode: int):
        super().__init__(f"exited with {returncode}")
        self.returncode = returncode


def free_port() -> int:
    """A loopback port no one listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and its descendants, from /proc (0 once it is gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def process_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time `pid` has used, from /proc (None where there is no /proc).
    CPU time, unlike wall time, does not grow when other processes take the cores."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http_ok(url: str, process: subprocess.Popen, timeout: float, *, interval: float = 0.5) -> None:
    """Poll `url` until it answers 200, so callers start only once the server serves.

    Raises ProcessExited when the process exits first and TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ProcessExited(process.returncode)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 in {timeout:g} s")
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(interval)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 30.0) -> int:
    """Send `sig`, then SIGKILL after `wait_s`; returns the exit status.

    A process started with `start_new_session=True` leads its own group: the signals go to
    the whole group, and what the leader leaves behind is killed too, so no child (vLLM's
    engine core, say) outlives it."""
    if process.poll() is None:
        _signal(process, sig)
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()
    _end_group(process.pid)
    return process.returncode


def _leads_group(process: subprocess.Popen) -> bool:
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False


def _signal(process: subprocess.Popen, sig: int) -> None:
    if not _leads_group(process):
        process.send_signal(sig)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or not ours to signal
        return False
    return True


def _end_group(pgid: int) -> None:
    """Kill the rest of the group `pgid` once its leader is reaped (Linux keeps a group's id
    from being reused while any member lives, so a live group of this id is the leader's)."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.1)
