"""The code in README.md and docs/ runs, so the docs cannot go stale; and the site builds.

Every ```python block of README.md and docs/*.md carries an HTML comment on the line before
its fence that says what the test does with it:

- `<!-- doctest -->`: run, in order with the file's other such blocks (one namespace per
  file, as a reader would paste them into one session; top-level `await` allowed), with the
  working directory at the repository's root. The embedded `local` model is played by
  `docs_reply` below, a scripted test double, so no model is started.
- `<!-- doctest: serve -->`: the same, while `refinegraph serve` with the default config
  (the same scripted model) listens on a free loopback port; the block's
  `http://127.0.0.1:8000` is replaced by that address.
- `<!-- not-run: REASON -->`: compiled only (a measurement script, a snippet of a larger
  program, a block that needs a GPU or a remote server); the reason is required.

A block with no marker fails the test, so nothing is left unchecked by accident.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from refinegraph.models.base import Samples, Usage

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTED_ADDRESS = "http://127.0.0.1:8000"
MARKER = re.compile(r"^<!--\s*(doctest(?::\s*(?P<mode>serve))?|not-run:\s*(?P<reason>\S.*?))\s*-->\s*$")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    source: str
    mode: str  # "run", "serve" or "compile"
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The file's ```python blocks with the marker on the line before each fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() != "```python":
            index += 1
            continue
        start = index
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == "```"), None)
        assert end is not None, f"{path.relative_to(ROOT)}:{start + 1}: ```python block never closed"
        before = lines[start - 1].strip() if start else ""
        found = MARKER.match(before)
        mode = "compile" if found and found["reason"] else "serve" if found and found["mode"] else "run"
        blocks.append(Block(path, start + 1, "\n".join(lines[start + 1:end]) + "\n", mode,
                            before if found else None))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in python_blocks(path)]


def compiled(block: Block) -> Any:
    return compile(block.source, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


# --- the scripted model the docs' examples run on -------------------------------------------------

SHOP_SQL = """```sql
SELECT p.name, SUM(oi.quantity) AS units
FROM order_item AS oi
JOIN orders AS o ON o.order_id = oi.order_id
JOIN product AS p ON p.product_id = oi.product_id
WHERE o.status <> 'cancelled'
GROUP BY p.name
ORDER BY units DESC
LIMIT 3
```"""


def docs_reply(messages: list[dict[str, Any]]) -> str:
    """What the docs' examples are answered with: a critic that is satisfied, SQL that
    answers the sample shop database's question, and the answer 5 to anything else (the
    examples ask what 2 + 3 is)."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if "strict reviewer" in system:
        return json.dumps({"correctness": 9, "completeness": 9, "clarity": 9, "score": 9, "verdict": "done",
                           "edits": []})
    if "SQL" in system or "query" in system:
        return SHOP_SQL
    return "2 + 3 = 5. The answer is 5."


async def scripted_sample(self, messages, *, n=1, **_kwargs) -> Samples:
    """LocalModel.sample, answered by docs_reply (no llama.cpp server is started)."""
    texts = [docs_reply(messages) for _ in range(n)]
    counts = [max(1, len(text.split())) for text in texts]
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
    return Samples(texts=texts, finish_reasons=["stop"] * n, completion_tokens=counts,
                   usage=Usage(prompt_tokens=prompt, completion_tokens=sum(counts)), model_id=self.name)


async def scripted_count(self, messages) -> int:
    """LocalModel.count_prompt_tokens, as scripted_sample counts the prompt."""
    return sum(len(str(m.get("content", "")).split()) for m in messages)


def scripted_start(self, n: int) -> None:
    """LocalModel._start: no server; an address nothing listens on (no request is sent)."""
    self.base_url, self._started = "http://scripted.invalid/v1", True


async def scripted_aclose(self) -> None:
    self._started = False


@pytest.fixture
def scripted_local(monkeypatch):
    """The embedded model's backend answers from docs_reply; nothing is loaded or started."""
    from refinegraph.models import local

    monkeypatch.setattr(local, "resolve_model", lambda model=None, model_path=None: ("docs-scripted", "scripted"))
    monkeypatch.setattr(local.LocalModel, "sample", scripted_sample)
    monkeypatch.setattr(local.LocalModel, "_start", scripted_start)
    monkeypatch.setattr(local.LocalModel, "count_prompt_tokens", scripted_count)
    monkeypatch.setattr(local.LocalModel, "aclose", scripted_aclose)


@pytest.fixture
def served(scripted_local) -> Iterator[str]:
    """`refinegraph serve` with the default config, on a free loopback port: its address."""
    uvicorn = pytest.importorskip("uvicorn")
    from refinegraph.server import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def execute(block: Block, namespace: dict[str, Any]) -> None:
    """Run a block as a reader would: top-level await on an event loop of its own."""
    result = eval(compiled(block), namespace)  # noqa: S307 - the repository's own documentation
    if inspect.iscoroutine(result):
        asyncio.run(result)


# --- the tests ------------------------------------------------------------------------------------


def test_docs_hold_python_blocks():
    """The runner finds the blocks (a parser that found none would pass everything)."""
    assert len(ALL_BLOCKS) >= 8
    assert sum(block.mode != "compile" for block in ALL_BLOCKS) >= 5


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda block: block.where)
def test_every_python_block_is_marked_and_compiles(block: Block):
    assert block.marker is not None, (
        f"{block.where}: put <!-- doctest -->, <!-- doctest: serve --> or <!-- not-run: REASON --> "
        "on the line before the ```python fence")
    compiled(block)


RUN_FILES = sorted({block.path for block in ALL_BLOCKS if block.mode != "compile"})


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_python_examples_run(path: Path, request, monkeypatch, capsys):
    blocks = [block for block in python_blocks(path) if block.mode != "compile"]
    monkeypatch.chdir(ROOT)
    request.getfixturevalue("scripted_local")
    address = request.getfixturevalue("served") if any(b.mode == "serve" for b in blocks) else None
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks:
        if block.mode == "serve":
            assert DOCUMENTED_ADDRESS in block.source, f"{block.where}: a served example talks to {DOCUMENTED_ADDRESS}"
            block = Block(block.path, block.line, block.source.replace(DOCUMENTED_ADDRESS, address), block.mode,
                          block.marker)
        try:
            execute(block, namespace)
        except Exception as exc:
            raise AssertionError(f"{block.where}: the example failed: {type(exc).__name__}: {exc}") from exc
    assert capsys.readouterr().out.strip(), f"{path.relative_to(ROOT)}: the examples printed nothing"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_links_resolve():
    """The README is read on the forge and on the package index, outside the site: each of
    its relative links names a file of the repository (mkdocs checks the docs' own)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(readme) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def config_keys(model: Any, prefix: str) -> Iterator[str]:
    """Every key of a config table, walking nested tables (pydantic models, and dicts or
    unions of them) as `table.key`."""
    from pydantic import BaseModel

    def tables(annotation: Any) -> Iterator[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation
        for arg in getattr(annotation, "__args__", ()):
            yield from tables(arg)

    for name, field in model.model_fields.items():
        key = field.alias or name
        yield f"{prefix}{key}"
        for table in tables(field.annotation):
            if table is not model:
                yield from config_keys(table, f"{prefix}{key}.")


def test_configuration_page_names_every_key():
    """docs/configuration.md names every key the config accepts, so a new setting cannot
    go undocumented (`source` is set by the loader, not written in a file)."""
    from refinegraph.config import Config

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    keys = sorted(set(config_keys(Config, "")) - {"source"})
    assert len(keys) > 40
    missing = [key for key in keys
               if f"`{key.rsplit('.', 1)[-1]}`" not in page and f"## `[{key}]`" not in page]
    assert not missing, f"docs/configuration.md does not name: {missing}"


def test_mkdocs_build_strict(tmp_path):
    """The site builds with every page in the nav and every relative link resolving."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' to build the docs site")
    completed = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert completed.returncode == 0, completed.stdout + completed.stderr
