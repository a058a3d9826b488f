"""Hostile programs in the code sandbox: the sandbox part of `refinegraph bench reliability`.

Seven programs a model could write, each run through tools.code.run_python (isolation
"auto"): a fork bomb, an infinite loop, a memory hog, writes outside the work folder
(/etc, $HOME, the repository, the host's /tmp and /dev/shm, /var/tmp), network access
(127.0.0.1:5432, a port we listen on, PostgreSQL's unix socket, an external address),
reading the caller's secrets (an environment variable set for the purpose, every
/proc/*/environ), and an output flood. Each must end with its expected status and a
message, and be contained: no process left behind, nothing written outside, no
connection made, no secret seen, output capped.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.reliability_common import Section
from refinegraph.tools.code import CodeResult, run_python
from refinegraph.tools.code.identity import Identity, sandbox_identity

FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
LOOP = "while True:\n    pass\n"
MEMORY_HOG = "hog = []\nwhile True:\n    hog.append(bytearray(16 * 2**20))\n"
FLOOD = "while True:\n    print('x' * 1000)\n"
SECRET_VAR = "REFINEGRAPH_SANDBOX_SECRET"
POSTGRES_SOCKET = "/run/postgresql/.s.PGSQL.5432"
EXTERNAL = ("1.1.1.1", 53)
TIMEOUT_S = 2.0
MAX_PROCESSES = 16
SLACK_S = 1.5
"""How long past timeout_s a stopped program may take to be gone."""


def program_processes(identity: Identity, exclude: set[int] | None = None, *, with_bwrap: bool = False) -> set[int]:
    """Live (not zombie) processes of the sandbox user running a sandboxed program (their
    command line names main.py), apart from `exclude`; bwrap's own two only `with_bwrap`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (exclude and int(entry) in exclude):
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != identity.uid:
                continue
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:  # gone while we looked: not left behind
            continue
        is_bwrap = cmdline.split(b"\0", 1)[0].endswith(b"bwrap")
        if state not in ("Z", "X") and b"main.py" in cmdline and (with_bwrap or not is_bwrap):
            found.add(int(entry))
    return found


class ProcessWatch:
    """Counts a sandboxed program's processes every 10 ms while it runs: the peak, and
    whatever is still alive afterwards."""

    def __init__(self, identity: Identity):
        self.identity = identity
        self.before = program_processes(identity, with_bwrap=True)
        self.peak = 0
        self.gone_after_s = 0.0
        """After the run returned, how long until none of its processes was alive."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, len(program_processes(self.identity, self.before)))
            self._stop.wait(0.01)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def left(self, wait_s: float = 1.0) -> set[int]:
        """Processes still alive after up to `wait_s` (a killed process takes a moment to go)."""
        start = time.monotonic()
        while True:
            alive = program_processes(self.identity, self.before, with_bwrap=True)
            self.gone_after_s = round(time.monotonic() - start, 3)
            if not alive or self.gone_after_s >= wait_s:
                return alive
            time.sleep(0.01)


def outside_targets(token: str) -> list[Path]:
    """Files a program must not be able to create: the system, the caller's home and the
    repository, and the host's shared temporary folders (private inside the sandbox)."""
    repo = Path(__file__).resolve().parents[1]
    return [Path("/etc") / token, Path.home() / token, repo / token, Path("/tmp") / token,
            Path("/dev/shm") / token, Path("/var/tmp") / token]


def writes_program(targets: list[Path]) -> str:
    return ("import os\n"
            f"for path in {[str(t) for t in targets]!r} + ['inside.txt']:\n"
            "    try:\n"
            "        with open(path, 'w') as handle:\n"
            "            handle.write('x')\n"
            "        print(path, 'written')\n"
            "    except OSError as exc:\n"
            "        print(path, 'refused', type(exc).__name__)\n")


def network_program(addresses: list[tuple[str, int]], unix_sockets: list[str]) -> str:
    return ("import socket\n"
            f"for host, port in {addresses!r}:\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=2).close()\n"
            "        print(host, port, 'connected')\n"
            "    except OSError as exc:\n"
            "        print(host, port, 'failed', type(exc).__name__)\n"
            f"for path in {unix_sockets!r}:\n"
            "    probe = socket.socket(socket.AF_UNIX)\n"
            "    try:\n"
            "        probe.connect(path)\n"
            "        print(path, 'connected')\n"
            "    except OSError as exc:\n"
            "        print(path, 'failed', type(exc).__name__)\n")


def secrets_program(token: str) -> str:
    return ("import glob, os\n"
            f"print('env', {SECRET_VAR!r} in os.environ, sorted(os.environ))\n"
            "for path in glob.glob('/proc/[0-9]*/environ'):\n"
            "    try:\n"
            "        data = open(path, 'rb').read()\n"
            "    except OSError:\n"
            "        continue\n"
            f"    if {token.encode()!r} in data:\n"
            "        print('seen in', path)\n")


@dataclass
class Case:
    name: str
    source: str
    expected: set[str]
    check: Callable[[CodeResult], tuple[bool, str]]
    """(contained, what was checked) once the program has ended."""


def _listener() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def sandbox_section() -> Section:
    """Run the hostile programs; ok only if each got its expected status, a message, and was contained."""
    section = Section(name="sandbox", ok=True)
    identity = sandbox_identity()
    if isinstance(identity, str):
        section.expect(False, f"no sandbox: {identity}")
        return section
    started = time.monotonic()
    token = "rg-sandbox-" + secrets.token_hex(6)
    targets = outside_targets(token)
    listener = _listener()
    addresses = [("127.0.0.1", 5432), listener.getsockname(), EXTERNAL]
    sockets = [POSTGRES_SOCKET] if os.path.exists(POSTGRES_SOCKET) else []
    watch_figures: dict[str, Any] = {}

    def timely(result: CodeResult) -> tuple[bool, str]:
        return result.duration_s <= TIMEOUT_S + SLACK_S, f"ended after {result.duration_s:.2f} s"

    cases = [
        Case("fork_bomb", FORK_BOMB, {"timeout", "killed", "error"},
             lambda r: (watch_figures["peak"] <= MAX_PROCESSES and not watch_figures["left"] and timely(r)[0],
                        f"peak {watch_figures['peak']} processes (limit {MAX_PROCESSES}), "
                        f"{len(watch_figures['left'])} left, {timely(r)[1]}")),
        Case("infinite_loop", LOOP, {"timeout"}, timely),
        Case("memory_hog", MEMORY_HOG, {"memory"}, lambda r: (True, "address space capped at 256 MiB")),
        Case("outside_writes", writes_program(targets), {"ok"},
             lambda r: (not any(t.exists() for t in targets) and "inside.txt written" in r.stdout,
                        f"{sum(t.exists() for t in targets)} of {len(targets)} outside files exist")),
        Case("network", network_program(addresses, sockets), {"ok"},
             lambda r: ("connected" not in r.stdout and r.stdout.count("failed") == len(addresses) + len(sockets),
                        f"{r.stdout.count('connected')} of {len(addresses) + len(sockets)} connections made")),
        Case("env_secrets", secrets_program(token), {"ok"},
             lambda r: (token not in r.stdout and "seen in" not in r.stdout and "env False" in r.stdout,
                        "secret seen" if "seen in" in r.stdout or "env True" in r.stdout else "secret not seen")),
        Case("output_flood", FLOOD, {"output_limit"},
             lambda r: (len(r.stdout) <= 64_000, f"{len(r.stdout)} bytes kept")),
    ]
    previous = os.environ.get(SECRET_VAR)
    os.environ[SECRET_VAR] = token
    results: dict[str, Any] = {}
    try:
        for case in cases:
            with ProcessWatch(identity) as watch:
                result = run_python(case.source, timeout_s=TIMEOUT_S, max_processes=MAX_PROCESSES)
            watch_figures.update(peak=watch.peak, left=watch.left())
            contained, checked = case.check(result)
            clear = result.status in case.expected and bool(result.message)
            results[case.name] = {"status": result.status, "isolation": result.isolation, "contained": contained,
                                  "seconds": result.duration_s, "message": result.message, "checked": checked,
                                  "peak_processes": watch.peak, "processes_left": len(watch_figures["left"]),
                                  "gone_after_s": watch.gone_after_s}
            section.lines.append(f"{case.name}: {result.status} ({result.isolation}) in {result.duration_s:.2f} s, "
                                 f"{'contained' if contained else 'NOT CONTAINED'}: {checked}; {result.message}")
            section.expect(contained, f"{case.name} was not contained: {checked}")
            section.expect(clear, f"{case.name} ended {result.status!r} (expected {sorted(case.expected)}): "
                                  f"{result.message}")
    finally:
        listener.close()
        if previous is None:
            os.environ.pop(SECRET_VAR, None)
        else:
            os.environ[SECRET_VAR] = previous
        written = [t for t in targets if t.exists()]
        for target in written:
            target.unlink()
    section.faults_injected = len(cases)
    section.writes_made = len(written)
    section.seconds = round(time.monotonic() - started, 3)
    bomb = results.get("fork_bomb", {})
    section.figures = {"cases": results, "isolation": next(iter(results.values()), {}).get("isolation"),
                       "fork_bomb_peak_processes": bomb.get("peak_processes"),
                       "fork_bomb_seconds": bomb.get("seconds"), "fork_bomb_gone_after_s": bomb.get("gone_after_s")}
    section.lines.insert(0, f"{len(cases)} hostile programs, {sum(r['contained'] for r in results.values())} "
                            f"contained, {len(written)} files written outside, isolation "
                            f"{section.figures['isolation']}")
    return section
