"""The launcher: the sandbox's interpreter runs this file's text (`python -E -S -c`), so it
imports nothing of refinegraph and must stay standard-library only.

It becomes a child subreaper (Linux prctl) and runs the program as its child, under the
rlimits, as another user where it is given one (the launcher runs as root and the program as
`nobody`: the program cannot signal it). A process that setsid()s leaves the program's
process group, so a kill of that group misses it; but an orphan reparents to the nearest
subreaper whatever its session, so once the program has exited, or the supervisor sends
SIGTERM (its deadline), the launcher SIGKILLs every process left under it, then ends as the
program did.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
WAKE = {signal.SIGCHLD, signal.SIGTERM}


def set_limits(spec: str) -> None:
    for limit in spec.split(","):
        name, soft, hard = limit.split(":")
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def drop_to(user: str) -> None:
    """Become `uid:gid` with no supplementary groups ("-": stay): the launcher stays root, so the
    program, another user, can neither signal it nor the process that supervises it."""
    if user == "-":
        return
    uid, gid = (int(part) for part in user.split(":"))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def start(spec: str, program: str, user: str) -> int:
    """Fork, then change user and set the limits in the child alone: RLIMIT_NPROC counts every
    process of the user, so a launcher under it could not fork while another run of that user
    is at its limit (and setuid() under the limit would make execve() fail while it is)."""
    child = os.fork()
    if child == 0:
        drop_to(user)
        set_limits(spec)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.execv(sys.executable, [sys.executable, "-E", "-s", "-B", program])
    return child


def wait_for(child: int) -> int | None:
    """The program's wait status, reaping orphans that end meanwhile; None on SIGTERM."""
    while True:
        if signal.sigwaitinfo(WAKE).si_signo == signal.SIGTERM:
            return None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # cannot happen while the program is unreaped: count it killed
                return None
            if pid == 0:
                break
            if pid == child:
                return status


def children() -> list[int]:
    mine, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # not a process, or gone while we looked
            continue
        if fields[1] == mine:
            found.append(int(entry))
    return found


def sweep() -> None:
    """SIGKILL and reap every child, again after each reap: a killed process's children
    become ours before its own death is reported, so the next pass finds them."""
    while True:
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # reaped already
                continue
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def end_like(status: int | None) -> None:
    """Exit with the program's code, or die of the signal it died of (bwrap reports 128 + N)."""
    if status is not None and os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    number = os.WTERMSIG(status) if status is not None else signal.SIGKILL
    if number != signal.SIGKILL:
        signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {number})
    os.kill(os.getpid(), number)
    os._exit(128 + number)


def main() -> None:
    become_subreaper()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # it may end by the program's SIGSEGV: no core file
    signal.pthread_sigmask(signal.SIG_BLOCK, WAKE)
    status = wait_for(start(sys.argv[1], sys.argv[2], sys.argv[3]))
    sweep()
    end_like(status)


if __name__ == "__main__":
    main()
