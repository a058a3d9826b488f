"""The code sandbox on hostile programs, and the code-filter graph on a scripted model (a test double).

Hostile programs run under bubblewrap ("auto": bubblewrap or nothing) and, where the check
still holds without namespaces, under rlimits alone too (asked for by name). Tests that need
bwrap skip with a reason that says how to enable them when it is missing or cannot start here.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks.reliability_sandbox import (
    FLOOD,
    FORK_BOMB,
    LOOP,
    MEMORY_HOG,
    POSTGRES_SOCKET,
    ProcessWatch,
    network_program,
    outside_targets,
    sandbox_section,
    secrets_program,
    writes_program,
)
from refinegraph import replay, run
from refinegraph.models import ScriptedModel
from refinegraph.tools.code import arun_python, extract_code, program_with_tests, run_python
from refinegraph.tools.code.bwrap import find_bwrap, probe
from refinegraph.tools.code.identity import sandbox_identity
from refinegraph.trace.verify import verify_run

from needs import needs

IDENTITY = sandbox_identity()
pytestmark = pytest.mark.skipif(isinstance(IDENTITY, str), reason=needs("a sandbox user", str(IDENTITY)))


def _bwrap_problem() -> str | None:
    if isinstance(IDENTITY, str):
        return IDENTITY
    bwrap = find_bwrap()
    if bwrap is None:
        return "bwrap is not on the PATH"
    problem = probe(bwrap, IDENTITY)
    if problem is not None:
        return (f"bwrap cannot start a sandbox here ({problem}): allow unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1, or kernel.apparmor_restrict_unprivileged_userns=0) "
                "or run the tests as root")
    return None


BWRAP_PROBLEM = _bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=needs("bubblewrap", str(BWRAP_PROBLEM)))
AVAILABLE = "auto" if BWRAP_PROBLEM is None else "rlimits"
"""For tests of what programs do, not of isolation: bubblewrap where it works, else rlimits by name."""
BOTH = [pytest.param("strict", marks=needs_bwrap, id="bwrap"), pytest.param("rlimits", id="rlimits")]
SLACK_S = 1.5


def _work_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("refinegraph-code-")}


# -- the sandbox ------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", BOTH)
def test_clean_program_runs_and_its_folder_is_removed(isolation):
    before = _work_folders()
    result = run_python("import sys, helper\nprint(helper.X + int(sys.stdin.read()))\n", stdin="1",
                        files={"helper.py": "X = 41\n"}, isolation=isolation)
    assert result.status == "ok" and result.exit_code == 0 and result.signal is None
    assert result.stdout == "42\n" and result.stderr == "" and result.message == "exited 0"
    assert result.isolation == ("bwrap" if isolation == "strict" else "rlimits")
    assert _work_folders() == before


@pytest.mark.parametrize("isolation", BOTH)
def test_errors_and_signals_are_named(isolation):
    error = run_python("raise ValueError('boom')\n", isolation=isolation)
    assert error.status == "error" and error.exit_code == 1 and error.message.endswith("ValueError: boom")
    assert 'File "/tmp/work/main.py", line 1' in error.stderr  # the same path in both isolations
    segv = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", isolation=isolation)
    assert segv.status == "killed" and segv.signal == 11 and "SIGSEGV" in segv.message


def test_a_bad_file_name_is_the_callers_error():
    with pytest.raises(ValueError, match="relative path"):
        run_python("print(1)", files={"../escape.py": ""})


@pytest.mark.parametrize("isolation", BOTH)
def test_fork_bomb_is_contained(isolation):
    # bounded so that, were the process limit broken, the test fails without harming the machine
    bomb = ("import os, time\nkids = 0\nwhile kids < 200:\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
            "    kids += 1\nprint(kids, flush=True)\ntime.sleep(60)\n")
    with ProcessWatch(IDENTITY) as watch:
        result = run_python(bomb, timeout_s=2, max_processes=8, isolation=isolation)
    left = watch.left(wait_s=1.0)
    assert result.status == "timeout" and result.signal == 9 and "process tree was killed" in result.message
    assert result.duration_s < 2 + SLACK_S
    forked = int(result.stdout)
    assert forked < 8 and watch.peak <= 8, (forked, watch.peak)
    assert not left, f"processes left after the run: {sorted(left)}"


@needs_bwrap
def test_unbounded_fork_bomb_ends_with_its_sandbox():
    with ProcessWatch(IDENTITY) as watch:
        result = run_python(FORK_BOMB, timeout_s=1.5, max_processes=16)
    assert result.status == "timeout" and result.duration_s < 1.5 + SLACK_S
    assert watch.peak <= 16 and not watch.left(wait_s=1.0)


@pytest.mark.parametrize("isolation", BOTH)
def test_infinite_loop_times_out(isolation):
    started = time.monotonic()
    result = run_python(LOOP, timeout_s=1, isolation=isolation)
    assert result.status == "timeout" and "1 s wall-clock limit" in result.message
    assert 1 <= result.duration_s < 1 + SLACK_S and time.monotonic() - started < 1 + SLACK_S + 1


@pytest.mark.parametrize("isolation", BOTH)
def test_memory_hog_is_stopped(isolation):
    result = run_python(MEMORY_HOG, memory_mb=128, isolation=isolation)
    assert result.status == "memory" and "MemoryError" in result.stderr
    assert "128 MiB" in result.message and result.duration_s < 5


@pytest.mark.parametrize("isolation", BOTH)
def test_output_flood_is_cut(isolation):
    result = run_python(FLOOD, max_output_bytes=10_000, isolation=isolation)
    assert result.status == "output_limit" and result.stdout_truncated and len(result.stdout) == 10_000
    assert "more than 10000 bytes to stdout" in result.message


@needs_bwrap
def test_writes_outside_the_work_folder_are_refused():
    targets = outside_targets(f"rg-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        result = run_python(writes_program(targets))
        assert result.status == "ok", result.message
        outcome = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
        assert outcome.pop("inside.txt") == "written" and set(outcome) == {str(t) for t in targets}
        # / is a read-only bind: /etc and the repository refuse; /tmp, /dev/shm and $HOME are
        # private tmpfs: written there, and gone with the sandbox
        assert outcome[str(targets[0])] == outcome[str(targets[2])] == "refused"
        assert [t for t in targets if t.exists()] == []
    finally:
        for target in targets:
            if target.exists():
                target.unlink()


@needs_bwrap
def test_network_is_unreachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    addresses = [listener.getsockname(), ("1.1.1.1", 53)]
    with socket.socket() as parent:  # PostgreSQL's port, where the parent can reach it
        if parent.connect_ex(("127.0.0.1", 5432)) == 0:
            addresses.append(("127.0.0.1", 5432))
    sockets = [POSTGRES_SOCKET] if os.path.exists(POSTGRES_SOCKET) else []
    try:
        with socket.create_connection(listener.getsockname(), timeout=2):
            pass  # the parent itself gets through: the refusal below is the sandbox's doing
        result = run_python(network_program(addresses, sockets), timeout_s=10)
    finally:
        listener.close()
    assert result.status == "ok", result.message
    assert "connected" not in result.stdout
    assert result.stdout.count("failed") == len(addresses) + len(sockets), result.stdout


@pytest.mark.parametrize("isolation", BOTH)
def test_environment_secrets_are_not_visible(isolation, monkeypatch):
    token = f"secret-{time.monotonic_ns()}"
    monkeypatch.setenv("REFINEGRAPH_SANDBOX_SECRET", token)
    monkeypatch.setenv("OPENAI_API_KEY", token)
    result = run_python(secrets_program(token), isolation=isolation)
    assert result.status == "ok" and token not in result.stdout and "env False" in result.stdout
    keys = set(result.stdout.split("env False ", 1)[1].split("\n", 1)[0].strip("[]").replace("'", "").split(", "))
    assert keys <= {"PATH", "HOME", "LANG", "TMPDIR", "PWD"}
    if isolation == "strict" or os.geteuid() == 0:  # rlimits alone as the same user: /proc/<parent> is readable
        assert "seen in" not in result.stdout


@pytest.mark.parametrize("isolation", ["auto", "strict"])
def test_without_bwrap_nothing_runs_and_the_package_is_named(monkeypatch, tmp_path, isolation):
    monkeypatch.setenv("PATH", str(tmp_path))  # bubblewrap hidden, not uninstalled
    marker = tmp_path / "ran"
    result = run_python(f"open({str(marker)!r}, 'w').close()\nprint(1)", isolation=isolation)
    assert result.status == "sandbox_unavailable" and result.isolation == "none" and not result.isolated
    assert "apt-get install bubblewrap" in result.message and 'isolation="rlimits"' in result.message
    assert result.stdout == "" and not marker.exists()


def test_rlimits_is_asked_for_by_name_and_marked_unisolated(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_python("print(1)", isolation="rlimits")
    assert result.status == "ok" and result.stdout == "1\n"
    assert result.isolation == "rlimits" and not result.isolated and result.isolation_note.startswith("unisolated")


@pytest.fixture
def shared_folder():
    """A folder outside the work folder that the program's user may write to."""
    folder = tempfile.mkdtemp(prefix="rg-test-shared-")
    os.chmod(folder, 0o777)
    yield folder
    shutil.rmtree(folder)


def kills_its_launcher(target: Path) -> str:
    """A program that starts a setsid() process (it writes `target` after 1 s), then SIGKILLs its parent."""
    return ("import os, signal, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    time.sleep(1.0)\n"
            f"    open({str(target)!r}, 'w').write('still here')\n    os._exit(0)\n"
            "try:\n    os.kill(os.getppid(), signal.SIGKILL)\n    print('sent', flush=True)\n"
            "except PermissionError:\n    print('refused', flush=True)\ntime.sleep(0.3)\n")


def test_a_program_cannot_kill_its_launcher_to_leave_a_process_behind(shared_folder):
    # rlimits mode: as root the launcher stays root and the program runs as nobody; as another
    # user the launcher is pid 1 of its own pid namespace (immune to the program's SIGKILL)
    target = Path(shared_folder) / "outlived.txt"
    source = kills_its_launcher(target)
    with ProcessWatch(IDENTITY) as watch:
        result = run_python(source, timeout_s=5, isolation="rlimits")
    left = watch.left(wait_s=1.0)
    time.sleep(1.5)  # past the escapee's sleep: had it survived, it would have written by now
    assert not target.exists(), f"a process the program started outlived the run: {result}"
    assert not left, f"processes left after the run: {sorted(left)}"
    assert result.stdout in ("refused\n", "sent\n") and result.status == "ok", result
    if os.geteuid() == 0:
        assert result.stdout == "refused\n"


def test_without_another_user_the_launcher_is_pid_1_of_its_own_namespace(shared_folder, monkeypatch):
    # the path a user other than root takes: the program keeps the caller's uid, so only the
    # pid namespace keeps it from killing its launcher (and from seeing the caller)
    from refinegraph.tools.code import sandbox
    from refinegraph.tools.code.identity import Identity
    if sandbox._pid_namespace() is None:
        pytest.skip(needs("user namespaces", "this kernel or user may not make a user and pid namespace "
                                              "(util-linux unshare)"))
    monkeypatch.setattr(sandbox, "sandbox_identity", lambda: Identity(os.getuid(), os.getgid(), IDENTITY.python,
                                                                      switch=False))
    target = Path(shared_folder) / "outlived.txt"
    result = run_python(kills_its_launcher(target), timeout_s=5, isolation="rlimits")
    time.sleep(1.5)
    assert not target.exists(), f"a process the program started outlived the run: {result}"
    assert result.status == "ok" and result.stdout == "sent\n", result  # sent, and ignored by pid 1
    assert "pid namespace of its own" in result.isolation_note
    segv = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", isolation="rlimits")
    assert segv.status == "killed" and segv.signal == 11, segv
    seen = run_python("import os\nprint(sum(p.isdigit() for p in os.listdir('/proc')))\n", isolation="rlimits")
    assert seen.status == "ok" and int(seen.stdout) <= 3, seen.stdout  # launcher, program, its listing


async def test_async_wrapper_runs_off_the_loop():
    results = [await arun_python(f"print({i} * 2)", isolation=AVAILABLE) for i in range(2)]
    assert [r.stdout for r in results] == ["0\n", "2\n"]


@needs_bwrap
def test_reliability_section_contains_every_hostile_program():
    section = sandbox_section()
    assert section.ok, section.problems
    assert section.faults_injected == 7 and section.writes_made == 0
    cases = section.figures["cases"]
    assert {k: v["status"] for k, v in cases.items()} == {
        "fork_bomb": "timeout", "infinite_loop": "timeout", "memory_hog": "memory", "outside_writes": "ok",
        "network": "ok", "env_secrets": "ok", "output_flood": "output_limit"}
    assert all(c["contained"] and c["processes_left"] == 0 for c in cases.values())


# -- programs from replies --------------------------------------------------------------------

PROMPT = 'from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    """Sum of xs."""\n'
TESTS = "def check(candidate):\n    assert candidate([2, 3]) == 5\n    assert candidate([]) == 0\n"


def test_code_is_read_from_fences_or_raw_and_assembled():
    assert extract_code("Sure:\n```python\ndef add(xs):\n    return sum(xs)\n```\nDone.") == (
        "def add(xs):\n    return sum(xs)", "fenced")
    two = "```\nprint('usage')\n```\n```python\ndef add(xs):\n    return 0\n```"
    assert extract_code(two, "add")[0] == "def add(xs):\n    return 0"
    assert extract_code("```python\ndef add(xs):\n    return sum(xs", "add") == ("def add(xs):\n    return sum(xs",
                                                                              "fenced")
    assert extract_code("    return sum(xs)\n") == ("    return sum(xs)", "raw")
    for code, shape in [("def add(xs):\n    return sum(xs)", "function"), ("return sum(xs)", "body"),
                        ("    return sum(xs)", "body")]:
        program = program_with_tests(PROMPT, code, TESTS, "add")
        assert program.shape == shape and program.solution.startswith(PROMPT.rstrip())
        assert "check(add)\n" in program.main and program.files == {"solution.py": program.solution}
        finished, result = program.judge(run_python(program.main, files=program.files, isolation=AVAILABLE))
        assert finished and result.status == "ok" and result.stdout == "", (program, result)


EARLY_EXITS = {
    "sys_exit": "def add(xs):\n    return 0\n\n\nimport sys\nsys.exit(0)",
    "os_exit": "def add(xs):\n    return 0\n\n\nimport os\nos._exit(0)",
    "main_block": "import sys\n\n\ndef add(xs):\n    return 0\n\n\ndef main():\n    return 0\n\n\n"
                  "if __name__ == '__main__':\n    sys.exit(main())",
}


@pytest.mark.parametrize("isolation", BOTH)
@pytest.mark.parametrize("name", sorted(EARLY_EXITS))
def test_a_wrong_candidate_that_exits_early_does_not_pass(name, isolation):
    from refinegraph.agents.code_verifier import outcome_of
    program = program_with_tests(PROMPT, EARLY_EXITS[name], TESTS, "add")
    finished, result = program.judge(run_python(program.main, files=program.files, isolation=isolation))
    assert not finished and outcome_of(result, finished=finished) != "passed", result
    if name == "main_block":  # imported, not run as __main__: the tests run and say no
        assert result.status == "error" and result.stderr.rstrip().endswith("AssertionError")
    else:
        assert result.status == "ok" and "before the tests finished" in result.message


def test_the_marker_is_taken_out_of_what_the_candidate_printed():
    program = program_with_tests(PROMPT, "def add(xs):\n    print('partial', end='')\n    return sum(xs)", TESTS,
                                 "add")
    finished, result = program.judge(run_python(program.main, files=program.files, isolation=AVAILABLE))
    assert finished and result.stdout == "partialpartial" and program.marker not in program.recorded()["main.py"]


@pytest.mark.parametrize("where", ["source", "files", "stdin"])
def test_a_lone_surrogate_is_a_clear_error_not_a_crash(where):
    text = "print('\ud800')\n"
    kwargs = {"source": text} if where == "source" else {"source": "print(1)\n", where: (
        {"helper.py": text} if where == "files" else text)}
    result = run_python(**kwargs, isolation="rlimits")
    assert result.status == "error" and result.isolation == "none" and result.exit_code is None
    assert "lone surrogate '\\ud800' at line 1, column 8" in result.message or where == "stdin", result.message
    assert "lone surrogate" in result.message


SETSID_ESCAPE = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                 "        time.sleep(60)\n    os._exit(0)\nprint('started', flush=True)\n")


@pytest.mark.parametrize("ending", ["exits", "times_out"])
def test_a_setsid_escapee_does_not_outlive_the_run_in_rlimits_mode(ending):
    source = SETSID_ESCAPE + ("time.sleep(60)\n" if ending == "times_out" else "time.sleep(0.3)\n")
    with ProcessWatch(IDENTITY) as watch:
        result = run_python(source, timeout_s=1.5, isolation="rlimits")
    left = watch.left(wait_s=1.0)
    assert result.stdout == "started\n" and watch.peak >= 2, (result, watch.peak)
    assert result.status == ("timeout" if ending == "times_out" else "ok"), result.message
    assert result.duration_s < 1.5 + SLACK_S
    assert not left, f"processes left after the run: {sorted(left)}"


# -- the code-filter graph ------------------------------------------------------------------

WRONG = "```python\ndef add(xs):\n    return len(xs)\n```"
RIGHT = "Here it is:\n```python\ndef add(xs: List[int]) -> int:\n    return sum(xs)\n```"
LOOPS = "```python\ndef add(xs):\n    while True:\n        pass\n```"
BROKEN = "```python\ndef add(xs) return 0\n```"
TASK = {"task": PROMPT, "tests": TESTS, "entry_point": "add"}


async def run_filter(store, replies, **params):
    model = ScriptedModel(replies, name="local")
    result = await run("code-filter", TASK, store=store, models={"local": model}, checkpoint=False,
                       params={"n": len(replies), **params})
    return result, model


@needs_bwrap
async def test_code_filter_answers_with_the_first_passing_candidate(store):
    result, model = await run_filter(store, [LOOPS, WRONG, RIGHT, RIGHT], timeout_s=1)
    assert len(model.calls) == 1  # n programs in one request
    assert result.state["chosen"] == 2 and result.state["passed"] and result.stop_reason == "done"
    assert result.answer == "def add(xs: List[int]) -> int:\n    return sum(xs)" and result.fallbacks == {}
    execs = store.events(result.run_id, types={"code_exec"})
    assert [(e["candidate"], e["status"], e["passed"]) for e in execs] == [
        (0, "timeout", False), (1, "error", False), (2, "ok", True), (3, "ok", True)]
    assert {e["isolation"] for e in execs} == {"bwrap"}
    assert execs[1]["stderr"].rstrip().endswith("AssertionError") and execs[1]["exit_code"] == 1
    assert execs[0]["signal"] == 9 and "wall-clock" in execs[0]["message"]
    assert all(e["program_digest"].startswith("sha256:") and e["program_blob"] for e in execs)
    (stop,) = store.events(result.run_id, types={"stop"})
    assert stop["chosen"] == 2 and stop["score"] == 0.5
    assert verify_run(store, result.run_id).ok

    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match and replayed.answer_matches
    again = store.events(replayed.run_id, types={"code_exec"})
    assert [e["status"] for e in again] == ["timeout", "error", "ok", "ok"]


@needs_bwrap
async def test_code_filter_with_no_passing_candidate_falls_back(store):
    result, _ = await run_filter(store, [BROKEN, WRONG])
    assert result.state["chosen"] == 1 and not result.state["passed"]  # the one that ran, over the syntax error
    assert result.stop_reason == "no_passing_candidate" and result.fallbacks == {"no_candidate_passed": 1}
    (fallback,) = store.events(result.run_id, types={"fallback"})
    assert fallback["detail"] == "0: error, 1: error" and "candidate 1 (it ran and failed a test)" in fallback["reason"]
    assert [c["outcome"] for c in result.state["candidates"]] == ["crashed", "failed"]
    replayed = await replay(result.run_id, store=store)
    assert replayed.decisions_match and replayed.model_calls == 0


EXITS_EARLY = "```python\ndef add(xs):\n    return 0\n\n\nimport sys\nsys.exit(0)\n```"


@needs_bwrap
async def test_code_filter_does_not_pass_a_candidate_that_exits_before_its_tests(store):
    result, _ = await run_filter(store, [EXITS_EARLY, RIGHT], timeout_s=2, isolation="auto")
    assert result.state["chosen"] == 1 and result.state["passed"]
    first, second = store.events(result.run_id, types={"code_exec"})
    assert (first["status"], first["passed"], second["passed"]) == ("ok", False, True)
    assert "before the tests finished" in first["message"] and second["stdout"] == ""
    replayed = await replay(result.run_id, store=store)  # the per-run marker is not in what is compared
    assert replayed.decisions_match and replayed.answer_matches


def test_another_run_at_its_process_limit_does_not_stop_this_one():
    # RLIMIT_NPROC counts all the sandbox user's processes: the launcher forks before it applies
    holder = ("import os, time\nfor _ in range(40):\n    try:\n        pid = os.fork()\n    except OSError:\n"
              "        break\n    if pid == 0:\n        time.sleep(3)\n        os._exit(0)\nprint('held', flush=True)\n"
              "time.sleep(3)\n")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(run_python, holder, timeout_s=2.5, max_processes=16, isolation="rlimits")
        time.sleep(1)
        result = run_python("print(1)", isolation="rlimits")
        assert held.result().status == "timeout"
    assert result.status == "ok" and result.stdout == "1\n", result.message


class _Writer:
    def put_blob(self, value):
        from refinegraph.trace.chain import canonical_json
        return "sha256:" + str(len(canonical_json(value).encode()))  # encodes as the trace store does


class _Context:
    """What run_tests uses of a RunContext: where events and fallbacks go."""

    def __init__(self):
        self.writer, self.events, self.fallbacks = _Writer(), [], []

    def emit(self, event):
        self.events.append(event)

    def fallback(self, kind, reason, detail=""):
        self.fallbacks.append(kind)


async def test_the_verifier_records_a_lone_surrogate_as_an_error():
    # a model's reply reaches the graph only once its call is recorded, which a lone surrogate fails
    # today (the trace store's UTF-8): run_tests itself must still neither raise nor store one
    from refinegraph.agents.code_verifier import run_tests
    ctx = _Context()
    checked = await run_tests(ctx, ["def add(xs):\n    return sum(xs)  # \ud800", "return sum(xs)"], prompt=PROMPT,
                              tests=TESTS, entry_point="add", sandbox={"isolation": AVAILABLE})
    assert [(c["status"], c["passed"]) for c in checked] == [("error", False), ("ok", True)]
    assert "lone surrogate" in checked[0]["message"] and ctx.events[0].status == "error"


async def test_the_verifier_records_an_unisolated_run():
    from refinegraph.agents.code_verifier import run_tests
    ctx = _Context()
    checked = await run_tests(ctx, ["return sum(xs)"], prompt=PROMPT, tests=TESTS, entry_point="add",
                              sandbox={"isolation": "rlimits"})
    assert checked[0]["passed"] and ctx.fallbacks == ["sandbox_rlimits_only"]
    assert ctx.events[0].isolation == "rlimits"


@pytest.mark.parametrize("isolation", ["auto", "strict"])
async def test_code_filter_without_bwrap_runs_nothing(store, monkeypatch, tmp_path, isolation):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap: no silent fallback to rlimits
    result, _ = await run_filter(store, [RIGHT, WRONG], isolation=isolation)

    assert result.fallbacks == {"sandbox_unavailable": 1, "no_candidate_passed": 1}
    assert result.state["chosen"] == 0 and not result.state["passed"]
    statuses = [e["status"] for e in store.events(result.run_id, types={"code_exec"})]
    assert statuses == ["sandbox_unavailable", "sandbox_unavailable"]


def test_code_filter_refuses_weaker_isolation_as_a_parameter():
    from refinegraph.config import ConfigError
    from refinegraph.runner import compiled_graph
    with pytest.raises(ConfigError, match="isolation"):
        compiled_graph("code-filter", {"isolation": "rlimits"})


# -- the embedded model -------------------------------------------------------------------

HUMANEVAL_0 = {  # HumanEval/0 (openai/human-eval, MIT licence), inlined
    "task": 'from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'
            '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
            '    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n'
            '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n',
    "tests": "def check(candidate):\n"
             "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
             "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
             "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
             "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False\n"
             "    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True\n"
             "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n"
             "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n",
    "entry_point": "has_close_elements",
}


@pytest.mark.local
async def test_code_filter_on_the_embedded_model(store):
    from refinegraph.models import LocalModel
    result = await run("code-filter", HUMANEVAL_0, store=store, models={"local": LocalModel("local")},
                       params={"n": 2, "max_tokens": 200}, checkpoint=False)
    execs = store.events(result.run_id, types={"code_exec"})
    assert [e["candidate"] for e in execs] == [0, 1] and all(e["message"] for e in execs)
    assert result.state["chosen"] is not None and verify_run(store, result.run_id).ok
    assert result.fallbacks.get("no_candidate_passed", 0) == (0 if result.state["passed"] else 1)
    replayed = await replay(result.run_id, store=store)
    assert replayed.model_calls == 0 and replayed.decisions_match
