"""The suite itself runs in any clone: its data is in tests/data (small, each file's source
and licence written down), a test skips only for a tool the machine lacks and says so, and
the run's end says how to enable each skipped group."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import probe_postgres, without_password
from data_paths import DATA, SPIDER, spider_sqlite
from needs import HOW_TO_ENABLE, needs, summary_lines

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/test"
MAX_DATA_BYTES = 2_000_000


def test_no_test_reads_data_outside_the_repository():
    beyond = re.compile(r'parents\[[2-9]\]|"shared"\s*/|\.\./shared/data/spider')  # above the checkout
    offenders = [f"{path.name}:{number}: {line.strip()}" for path in sorted(TESTS.glob("*.py"))
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if beyond.search(line) and path.name != Path(__file__).name]
    assert offenders == []


def test_every_stored_data_file_has_its_source_and_licence_written_down():
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    files = [p for p in DATA.rglob("*") if p.is_file() and p.name != "README.md"]
    assert files
    missing = [str(p.relative_to(DATA)) for p in files if p.name not in readme and p.parent.name not in readme]
    assert missing == []
    assert readme.count("Licence:") >= 3  # the Spider databases and questions, the SQL pool, the reasoning pools


def test_the_stored_data_stays_small():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < MAX_DATA_BYTES, f"tests/data holds {total:,} bytes; the larger data sets belong to the benchmarks"


def test_a_missing_database_is_an_error_naming_what_is_stored():
    assert spider_sqlite("concert_singer").is_file()
    with pytest.raises(FileNotFoundError, match="concert_singer"):
        spider_sqlite("no_such_db")
    assert {p.name for p in (SPIDER / "database").iterdir()} >= {"concert_singer", "pets_1"}


def test_pools_unpack_to_the_whole_recorded_pools(pools):
    lines = {name: (pools / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
             for name in ("date_faithfulcot", "gsm8k_faithfulcot")}
    assert (len(lines["date_faithfulcot"]), len(lines["gsm8k_faithfulcot"])) == (359, 1319)


# -- PostgreSQL: the default is tried, and a skip names REFINEGRAPH_PG_DSN -----------------------

def test_without_the_variable_the_default_is_tried_and_the_skip_names_the_variable():
    dsn, problem = probe_postgres(None, default=UNREACHABLE_PG)
    assert dsn == UNREACHABLE_PG
    assert problem.startswith("needs PostgreSQL: ")
    assert "REFINEGRAPH_PG_DSN" in problem and ("127.0.0.1:1" in problem or "psycopg" in problem)


def test_the_skip_reason_shows_no_password():
    dsn, problem = probe_postgres("postgresql://rg:s3cret@127.0.0.1:1/test")
    assert dsn.endswith("s3cret@127.0.0.1:1/test") and "s3cret" not in problem
    assert without_password("postgresql://rg:s3cret@h:5/d") == "postgresql://rg:***@h:5/d"
    assert without_password(UNREACHABLE_PG) == UNREACHABLE_PG


# -- the skip summary ---------------------------------------------------------------------------

def test_summary_counts_each_need_and_says_how_to_enable_it():
    reasons = [needs("bubblewrap", "bwrap is not on the PATH")] * 3 + [
        needs("PostgreSQL", "no server answers"), "could not import 'ray': No module named 'ray'", "flaky here"]
    lines = summary_lines(reasons)
    assert lines[0] == f"3 skipped: need bubblewrap. To run them: {HOW_TO_ENABLE['bubblewrap']}."
    assert any(line.startswith("1 skipped: need PostgreSQL.") and "REFINEGRAPH_PG_DSN" in line for line in lines)
    assert any(line.startswith("1 skipped: need an optional package.") for line in lines)
    assert lines[-1] == "1 skipped for another reason: flaky here"
    assert summary_lines([]) == []


def test_a_need_without_a_written_way_to_enable_it_is_refused():
    with pytest.raises(KeyError, match="HOW_TO_ENABLE"):
        needs("a GPU", "none here")


def test_the_end_of_a_run_says_how_to_run_the_skipped_tests(pytester):
    pytester.makepyfile(test_some=f"""
        import pytest
        from needs import needs

        @pytest.mark.skipif(True, reason=needs("Chromium", "no chromium on the PATH"))
        def test_page(): pass

        def test_db(): pytest.skip(needs("PostgreSQL", "no server answers at {UNREACHABLE_PG}"))

        def test_runs(): pass
    """)
    result = pytester.runpytest("-p", "needs", "-p", "no:asyncio", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*how to run the skipped tests*",
                                 "1 skipped: need Chromium. To run them: install headless Chromium*",
                                 "1 skipped: need PostgreSQL. To run them: *REFINEGRAPH_PG_DSN*",
                                 "SKIPPED*needs Chromium: no chromium on the PATH"], consecutive=False)
