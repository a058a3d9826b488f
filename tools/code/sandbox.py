"""Running model-written Python: contained in time, memory, processes, files and network.

`run_python` never raises for what the program does: every ending is a CodeResult
with a status and a message. Isolation "auto" (and its older name "strict") means
bubblewrap or nothing: where bubblewrap is missing or cannot start, nothing runs and the
result (status "sandbox_unavailable") names the package to install. "rlimits" asks, on
purpose, for resource limits alone (a cleared environment and its own folder, but the
host's network and files, within the sandbox user's rights); such a result says
`isolation="rlimits"` and its `isolation_note` begins "unisolated". Even then the program
cannot signal what supervises it: as root the launcher stays root and the program runs as
`nobody` (setuid in the child); as another user the launcher is pid 1 of a pid namespace of
its own (util-linux `unshare`) where the kernel allows one, and every process the program
left dies with it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import selectors
import shutil
import signal as signals
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from refinegraph.tools.code.bwrap import WORK_DIR, bwrap_argv, environment, find_bwrap, probe
from refinegraph.tools.code.identity import Identity, sandbox_identity
from refinegraph.tools.code.limits import Limits, launcher_argv
from refinegraph.tools.code.result import CodeResult
from refinegraph.tools.code.workdir import check_names, work_folder

IsolationMode = Literal["auto", "strict", "rlimits"]
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
UNSHARE = ["--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc", "--"]
"""util-linux unshare's options for rlimits mode as a user other than root: the launcher is
pid 1 of a new pid namespace (its program cannot signal it, nor see the caller), and when it
ends the kernel kills every process left in the namespace."""
LINGER_S = 0.2
"""After the program exits, how long its pipes may stay open (held by processes it left)."""
SWEEP_S = 2.0
"""In rlimits mode, how long the launcher may take to kill what the program left, once asked."""
_MEMORY = re.compile(r"^(MemoryError\b|.*\[Errno 12\]|.*Cannot allocate memory|Fatal Python error: .*memory)")


def run_python(source: str, *, stdin: str = "", timeout_s: float = 5, memory_mb: int = 256,
               max_output_bytes: int = 64_000, max_processes: int = 16, files: dict[str, str] | None = None,
               isolation: IsolationMode = "auto") -> CodeResult:
    """Run `source` as a Python program in the sandbox and say how it ended.

    `files` are put beside it in the work folder (relative names); a bad name is the
    caller's error (ValueError), not the program's.
    """
    limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes,
                    max_processes=max_processes)
    check_names(files)
    surrogate = lone_surrogate(source, stdin, files)
    if surrogate:
        return CodeResult(status="error", isolation="none", message=surrogate)
    identity = sandbox_identity()
    if isinstance(identity, str):
        return CodeResult(status="sandbox_unavailable", isolation="none", message=identity)
    mode, note = _choose(isolation, identity)
    if mode is None:
        return CodeResult(status="sandbox_unavailable", isolation="none", message=note)
    try:
        with work_folder(identity, source, files) as folder:
            if mode == "bwrap":
                argv = bwrap_argv(find_bwrap() or "bwrap", str(folder), identity, limits)
                cwd, env, popen = None, environment(WORK_DIR), identity.popen_kwargs()
            else:
                argv, cwd, env, popen = _rlimits_argv(identity, limits), str(folder), environment(str(folder)), {}
            # in a pid namespace (bwrap's, unshare's) SIGKILL of the group ends every process in it
            namespaced = mode == "bwrap" or (not identity.switch and _pid_namespace() is not None)
            run = _supervise(argv, cwd=cwd, env=env, popen=popen, limits=limits, stdin=stdin,
                             launcher_first=not namespaced)
            return _result(run, limits, mode, note, str(folder), namespaced)
    except OSError as exc:  # the machine's doing (no disk space, no interpreter), not the program's
        return CodeResult(status="sandbox_unavailable", isolation="none",
                          message=f"could not start the sandbox: {type(exc).__name__}: {exc}")


def lone_surrogate(source: str, stdin: str, files: dict[str, str] | None) -> str | None:
    """Why the text cannot be written as UTF-8 (a lone surrogate such as '\\ud800', which a
    model's JSON-escaped reply can hold), else None: nothing could run it faithfully."""
    texts = {"the program": source, "stdin": stdin, **{f"file {name}": text for name, text in (files or {}).items()}}
    for what, text in texts.items():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = text.count("\n", 0, exc.start) + 1
            column = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
            return (f"not run: {what} holds a lone surrogate {text[exc.start]!r} at line {line}, column {column}, "
                    f"which UTF-8 cannot encode")
    return None


async def arun_python(source: str, **options: Any) -> CodeResult:
    """run_python off the event loop (the graph runs in asyncio)."""
    return await asyncio.to_thread(run_python, source, **options)


def _choose(isolation: IsolationMode, identity: Identity) -> tuple[str | None, str]:
    """(mode, note): bubblewrap, or rlimits when asked for by name (the note says so), or
    (None, why nothing may run): no silent fallback."""
    if isolation == "rlimits":
        return "rlimits", _unisolated_note(identity)
    bwrap = find_bwrap()
    problem = probe(bwrap, identity) if bwrap else f"bubblewrap (bwrap) is not on the PATH; {INSTALL_HINT}"
    if problem is None:
        return "bwrap", ""
    return None, (f"not run: isolation {isolation!r} needs bubblewrap, which is unavailable here: {problem}. "
                  f"Pass isolation=\"rlimits\" to run it unisolated (resource limits only) on purpose")


def _unisolated_note(identity: Identity) -> str:
    note = ("unisolated: resource limits only, as asked (isolation=\"rlimits\"): the program reaches the "
            "host's network and every file its user may read")
    if identity.switch:
        return note + f"; it runs as uid {identity.uid}, the launcher as root"
    if _pid_namespace() is None:
        return note + "; it runs as the caller's user, which it shares with its launcher (no pid namespace here)"
    return note + "; its launcher is pid 1 of a pid namespace of its own"


@functools.cache
def _pid_namespace() -> list[str] | None:
    """unshare's command prefix where this user may make a user and pid namespace, else None.
    Checked once per process."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    try:
        done = subprocess.run([unshare, *UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return [unshare, *UNSHARE] if done.returncode == 0 else None


def _rlimits_argv(identity: Identity, limits: Limits) -> list[str]:
    """The launcher's command in rlimits mode: as root it stays root and runs the program as
    the sandbox user; otherwise it runs in a pid namespace of its own where there can be one."""
    if identity.switch:
        return launcher_argv(identity.python, limits, user=(identity.uid, identity.gid))
    return [*(_pid_namespace() or []), *launcher_argv(identity.python, limits)]


@dataclass
class _Run:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    overflow: str | None = None
    """The stream that went past max_output_bytes, if one did."""
    timed_out: bool = False
    returncode: int | None = None
    seconds: float = 0.0
    stray: str = ""
    """Why processes the program left may have outlived it (the launcher's sweep did not finish)."""


def _supervise(argv: list[str], *, cwd: str | None, env: dict[str, str], popen: dict[str, Any], limits: Limits,
               stdin: str, launcher_first: bool) -> _Run:
    """Start the program in its own session, feed stdin, collect capped output, and kill
    its whole process group at the deadline, on overflow, or once it has exited
    (`launcher_first`: after the launcher has killed what left the group, see _stop)."""
    run = _Run()
    started = time.monotonic()
    deadline = started + limits.timeout_s
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env=env, start_new_session=True, close_fds=True, **popen)
    pending = memoryview(stdin.encode("utf-8"))
    buffers = {proc.stdout: ("stdout", run.stdout), proc.stderr: ("stderr", run.stderr)}
    try:
        with selectors.DefaultSelector() as selector:
            for stream in buffers:
                os.set_blocking(stream.fileno(), False)
                selector.register(stream, selectors.EVENT_READ)
            if pending:
                os.set_blocking(proc.stdin.fileno(), False)
                selector.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
            exited_at = None
            while selector.get_map() and run.overflow is None:
                now = time.monotonic()
                if now >= deadline:
                    run.timed_out = True
                    break
                if proc.poll() is not None:
                    exited_at = exited_at or now
                    if now - exited_at > LINGER_S:
                        break
                for key, _ in selector.select(timeout=min(deadline - now, 0.1)):
                    if key.fileobj is proc.stdin:
                        pending = _feed(selector, proc.stdin, pending)
                    else:
                        _drain(selector, key.fileobj, *buffers[key.fileobj], limits.max_output_bytes, run)
        if not run.timed_out and run.overflow is None:  # its pipes closed: let it (and bwrap) exit
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                run.timed_out = True
    finally:
        run.stray = _stop(proc, launcher_first)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if not stream.closed:
                stream.close()
    run.returncode = proc.returncode
    run.seconds = time.monotonic() - started
    return run


def _feed(selector: selectors.BaseSelector, stream: IO[bytes], pending: memoryview) -> memoryview:
    try:
        written = os.write(stream.fileno(), pending[:65536])
    except (BrokenPipeError, BlockingIOError) as exc:  # the program closed stdin, or is not reading yet
        written = 0 if isinstance(exc, BlockingIOError) else len(pending)
    pending = pending[written:]
    if not pending:
        selector.unregister(stream)
        stream.close()
    return pending


def _drain(selector: selectors.BaseSelector, stream: IO[bytes], name: str, buffer: bytearray, cap: int,
           run: _Run) -> None:
    try:
        chunk = os.read(stream.fileno(), 65536)
    except BlockingIOError:
        return
    if not chunk:
        selector.unregister(stream)
        return
    room = cap - len(buffer)
    buffer += chunk[:max(room, 0)]
    if len(chunk) > room:
        run.overflow = name


def _stop(proc: subprocess.Popen, launcher_first: bool) -> str:
    """Kill the program and all it started; why some may survive, else "".

    In rlimits mode a process that setsid() left the group: the launcher, their subreaper,
    kills those once the program has exited, or at our SIGTERM (the deadline, an overflow)."""
    stray = ""
    if launcher_first and proc.poll() is None:
        proc.send_signal(signals.SIGTERM)
        try:
            proc.wait(timeout=SWEEP_S)
        except subprocess.TimeoutExpired:
            stray = (f"the launcher did not finish killing the program's processes within {SWEEP_S:g} s; "
                     f"any that left its process group (setsid) may have outlived it")
    _kill_group(proc)
    return stray


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's process group (under bwrap: bwrap, whose death takes its pid
    namespace, every process the program made, with it), then reap."""
    try:
        os.killpg(proc.pid, signals.SIGKILL)
    except ProcessLookupError:  # the group is gone already: nothing left to stop
        pass
    proc.wait()


def _text(data: bytearray, folder: str) -> str:
    return data.decode("utf-8", errors="replace").replace(folder, WORK_DIR)


def _signal_of(returncode: int, namespaced: bool, killed_by_us: bool) -> int | None:
    """The signal that ended the program; a pid namespace's init (bwrap's, or the launcher as
    pid 1 under unshare) cannot die of its own signal and reports it as exit code 128 + N."""
    if returncode < 0:
        return None if killed_by_us else -returncode
    if namespaced and 128 < returncode <= 128 + 64:
        return returncode - 128
    return None


def _signal_name(number: int) -> str:
    try:
        return f"{signals.Signals(number).name} ({number})"
    except ValueError:
        return f"signal {number}"


def _result(run: _Run, limits: Limits, mode: str, note: str, folder: str, namespaced: bool) -> CodeResult:
    stdout, stderr = _text(run.stdout, folder), _text(run.stderr, folder)
    stopped_by_us = run.timed_out or run.overflow is not None
    code = run.returncode if run.returncode is not None else -signals.SIGKILL
    sig = _signal_of(code, namespaced, stopped_by_us)
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if run.overflow is not None:
        status = "output_limit"
        message = (f"stopped: wrote more than {limits.max_output_bytes} bytes to {run.overflow} "
                   f"(max_output_bytes); the process tree was killed")
    elif run.timed_out:
        status = "timeout"
        message = (f"stopped at the {limits.timeout_s:g} s wall-clock limit (timeout_s); "
                   f"the process tree was killed")
    elif sig == signals.SIGXCPU:
        status = "timeout"
        message = f"killed by SIGXCPU: used up its {limits.cpu_s} s of CPU time (RLIMIT_CPU)"
    elif sig is not None:
        status = "killed"
        message = f"killed by {_signal_name(sig)}"
    elif code != 0 and any(_MEMORY.match(line.strip()) for line in lines[-3:]):
        status = "memory"
        message = f"ran out of memory under the {limits.memory_mb} MiB address-space limit (RLIMIT_AS): {last}"
    elif code != 0:
        status = "error"
        message = f"exited with code {code}" + (f": {last[:300]}" if last else "")
    else:
        status = "ok"
        message = "exited 0"
    if run.stray:
        message += f"; {run.stray}"
    return CodeResult(status=status, isolation=mode, message=message, exit_code=None if code < 0 else code,
                      signal=sig if sig is not None else (signals.SIGKILL if stopped_by_us else None),
                      stdout=stdout, stderr=stderr, stdout_truncated=run.overflow == "stdout",
                      stderr_truncated=run.overflow == "stderr", duration_s=round(run.seconds, 4),
                      isolation_note=note)
