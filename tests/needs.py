"""What a test may need beyond Python and the installed packages, the reason it skips with
when the machine lacks it, and the end-of-run summary that says how to enable each group.

A checkout holds everything else the tests read (tests/data), so these are the only reasons
to skip: a test that needs one skips with `needs(what, why)`, a reason that begins
"needs <what>:"; the summary counts the skipped tests per <what> and prints how to run
them. A skip reason of any other form is listed as it stands, so an unexpected skip shows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
"""Where the PostgreSQL tests look when REFINEGRAPH_PG_DSN is unset (a superuser of trust
auth on the local test server, as on CI)."""

HOW_TO_ENABLE: dict[str, str] = {
    "bubblewrap": "install bubblewrap (apt-get install bubblewrap) on a kernel that lets unprivileged users "
                  "make user namespaces (or run the tests as root); .ci/run installs it",
    "PostgreSQL": "start a PostgreSQL server and set REFINEGRAPH_PG_DSN to a database where the tests may "
                  f"create schemas and roles (tried when unset: {DEFAULT_PG_DSN})",
    "Chromium": "install headless Chromium (apt-get install chromium); .ci/run installs it",
    "a sandbox user": "as root, the sandbox runs programs as nobody: install python3 in /usr/bin so that "
                      "user can run it, or run the tests as another user",
    "user namespaces": "allow unprivileged user and pid namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                       "or kernel.apparmor_restrict_unprivileged_userns=0) and install util-linux's unshare",
    "an optional package": "install the extras the README's test command installs (pip install -e \".[local,dev]\")",
}
"""Each thing a test may need, and what makes its tests run."""

PREFIX = "needs "


def needs(what: str, why: str) -> str:
    """The skip reason of a test that needs `what` (a key of HOW_TO_ENABLE) and lacks it because `why`."""
    if what not in HOW_TO_ENABLE:
        raise KeyError(f"no way to enable {what!r} is written down: add it to HOW_TO_ENABLE")
    return f"{PREFIX}{what}: {why}"


IMPORT_FAILED = "could not import "
"""How pytest.importorskip's own reason begins: a package of an extra is not installed."""


def group_of(reason: str) -> str | None:
    """The need a skip reason names (a key of HOW_TO_ENABLE), or None for any other reason."""
    if reason.startswith(IMPORT_FAILED):
        return "an optional package"
    if reason.startswith(PREFIX) and ":" in reason:
        what = reason[len(PREFIX):reason.index(":")]
        if what in HOW_TO_ENABLE:
            return what
    return None


def summary_lines(reasons: Iterable[str]) -> list[str]:
    """One line per need (how many tests skipped for it, and how to enable them), then one per
    other reason with its count; nothing when no test skipped."""
    needed: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for reason in reasons:
        what = group_of(reason)
        if what is None:
            other[reason] += 1
        else:
            needed[what] += 1
    lines = [f"{count} skipped: need {what}. To run them: {HOW_TO_ENABLE[what]}."
             for what, count in sorted(needed.items(), key=lambda item: (-item[1], item[0]))]
    lines += [f"{count} skipped for another reason: {reason}"
              for reason, count in sorted(other.items(), key=lambda item: (-item[1], item[0]))]
    return lines


def skip_reason(report) -> str:
    """The reason of a skipped test's report (pytest keeps it as (path, line, "Skipped: why"))."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter) -> None:
    """After pytest's own summary: per thing the skipped tests need, how many and how to run
    them (tests/conftest.py imports this hook; `-p needs` loads it in another session)."""
    lines = summary_lines(skip_reason(report) for report in terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.section("how to run the skipped tests")
        for line in lines:
            terminalreporter.write_line(line)
