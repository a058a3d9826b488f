"""Servers the benches start are stopped with everything they started."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from refinegraph.procs import stop

# A leader that forks a child (as vLLM's server forks its engine core), prints its pid, waits.
LEADER = ("import os, sys, time\n"
          "child = os.fork()\n"
          "if child == 0:\n"
          "    time.sleep(120); os._exit(0)\n"
          "print(child, flush=True)\n"
          "time.sleep(120)\n")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stop_ends_the_leader_and_the_children_it_forked():
    leader = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(leader.stdout.readline())
    assert _alive(child)
    code = stop(leader, wait_s=10)
    assert code == -15  # SIGTERM ended the leader
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the forked child outlived its stopped leader"
    leader.stdout.close()


def test_stop_of_a_process_outside_its_own_group_signals_it_alone():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    assert os.getpgid(process.pid) != process.pid
    assert stop(process, wait_s=10) == -15
