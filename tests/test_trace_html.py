"""The HTML page of a run: steps in order, decisions readable, model output escaped, a
tampered chain shown; then rendered in headless Chromium (skipped where it is absent).

Runs use the ScriptedModel test double so each decision is known in advance.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinegraph import Config, ModelSpec, run
from refinegraph.cli.app import app
from refinegraph.models import ScriptedModel
from refinegraph.trace.html import render_run, write_html
from refinegraph.trace.store import TraceStore

from conftest import scripted_by_role, verdict
from needs import needs

HOSTILE = "<script>alert(1)</script>"


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element] = []
        self.content: list[str | Element] = []  # text and children, in document order

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.content)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Element]:
        return [e for e in self.walk() if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
                and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def ancestors(self) -> list[Element]:
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out


VOID = {"meta", "br", "hr", "img", "input", "link"}


class Dom(HTMLParser):
    """A small DOM from the stdlib parser: enough to ask what the page shows."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {}, None)
        self.current = self.root
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(element)
        self.current.content.append(element)
        if tag not in VOID:
            self.current = element

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.content.append(data)


def steps(dom: Dom) -> list[str]:
    return [d.attrs["data-node"] for d in dom.root.find_all("details", cls="node")]


def node_order(store: TraceStore, run_id: str) -> list[str]:
    return [e["node"] for e in store.events(run_id, types={"node_started"})]


def vote_rows(table: Element) -> list[tuple[str, str, bool]]:
    rows = []
    for tr in table.find_all("tr")[1:]:
        cells = tr.find_all("td")
        rows.append((cells[0].text().replace("\u2714", "").strip(), cells[1].text().strip(), "winner" in tr.classes))
    return rows


# -- runs ---------------------------------------------------------------------------------


async def self_refine_run(store: TraceStore) -> str:
    model = scripted_by_role([verdict(4), verdict(9, done=True)])
    result = await run("self-refine", "Explain why the sky is blue.", store=store, models={"local": model},
                       checkpoint=False)
    return result.run_id


async def self_consistency_run(store: TraceStore, texts: list[str] | None = None, task: str = "What is 3*4?") -> str:
    texts = texts or ["The answer is 12.", "The answer is 7", "So 12.", "The answer is 12", "no idea at all"]
    result = await run("self-consistency", task, params={"n": len(texts)}, store=store,
                       models={"local": ScriptedModel(texts, name="local")}, checkpoint=False)
    return result.run_id


ACAR_CONFIG = Config(models={"small": ModelSpec(), "mid": ModelSpec()},
                     roles={"default": "small", "probe": "small", "model1": "small", "model2": "mid",
                            "model3": "mid", "judge": "mid"})


async def acar_run(store: TraceStore) -> str:
    small = ScriptedModel([f"The answer is {a}." for a in (4, 4, 5, 5)], name="small")
    mid = ScriptedModel(["The answer is 5."], name="mid")
    result = await run("acar", "Tom has 3 apples and buys 2 more. How many?", store=store, config=ACAR_CONFIG,
                       models={"small": small, "mid": mid}, checkpoint=False)
    assert result.state["mode"] == "two"
    return result.run_id


@pytest.fixture
def small_db(tmp_path) -> str:
    path = tmp_path / "shop.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT)")
    db.executemany("INSERT INTO singer (name) VALUES (?)", [("Ann",), ("Bo",), ("Cy",)])
    db.commit()
    db.close()
    return str(path)


async def sql_sc_run(store: TraceStore, db: str) -> str:
    candidates = iter(["SELECT COUNT(*) FROM singer", "SELECT name FROM singer", "select count(id) from singer",
                       "SELECT nope FROM singer"])
    model = ScriptedModel(lambda messages: f"```sql\n{next(candidates)};\n```", name="local")
    result = await run("sql-sc", {"question": "How many singers are there?", "db": db}, params={"n": 4},
                       store=store, models={"local": model}, checkpoint=False)
    assert result.state["rows"] == [[3]]
    return result.run_id


# -- the page -----------------------------------------------------------------------------


async def test_self_refine_page_shows_steps_in_order_and_verifies(store):
    run_id = await self_refine_run(store)
    dom = Dom(render_run(store, run_id))
    assert steps(dom) == node_order(store, run_id) == ["solver", "critic", "decide", "refiner", "critic", "decide",
                                                       "finish"]
    (status,) = dom.root.find_all(id="verify")
    assert status.attrs["data-ok"] == "true" and "Chain verified: OK" in status.text()
    critiques = dom.root.find_all("div", cls="critique")
    assert len(critiques) == 2 and "9.0" in critiques[1].text()
    calls = dom.root.find_all("details", cls="call")
    assert len(calls) == 4
    # each call holds its request messages and its response text (from the blobs)
    assert "refiner answer 1" in calls[2].text() and "Explain why the sky is blue." in calls[0].text()
    (stop,) = dom.root.find_all("div", cls="stop")
    assert "done" in stop.text()
    header = dom.root.find_all("header")[0].text()
    assert "refiner answer 1" in header and "self-refine" in header


async def test_self_consistency_page_shows_the_vote(store):
    run_id = await self_consistency_run(store)
    dom = Dom(render_run(store, run_id))
    assert steps(dom) == ["sampler", "finish"]
    (vote,) = dom.root.find_all("div", cls="vote")
    assert vote_rows(vote.find_all("table")[0]) == [("12", "3", True), ("7", "1", False)]
    assert "winner 12, agreement 60.0%" in vote.text()  # 3 of 5 samples, the unparseable one included
    assert store.events(run_id, types={"vote"})[0]["failed"] == [4]
    assert "unparseable (not counted): [4]" in vote.text()


async def test_acar_page_shows_routing_and_nested_steps(store):
    run_id = await acar_run(store)
    dom = Dom(render_run(store, run_id))
    assert steps(dom) == node_order(store, run_id)
    modes = [d for d in dom.root.find_all("details", cls="node") if d.attrs["data-node"] == "mode"]
    assert len(modes) == 2
    inner = [d.attrs["data-node"] for d in modes[0].find_all("details", cls="node")[1:]]
    assert inner == ["sampler", "finish"]
    decided, final = dom.root.find_all("div", cls="route")
    assert "0.5 against thresholds 0.3 / 0.7" in decided.text() and "two-model mode" in decided.text()
    assert '["small", "mid"]' in decided.text()
    assert '{"small": "5", "mid": "5"}' in final.text() and "winner" in final.text()
    models = [c.find_all("b")[1].text() for c in dom.root.find_all("details", cls="call")]
    assert models == ["small", "small", "mid"]


async def test_sql_sc_page_shows_executions_and_the_vote(store, small_db):
    run_id = await sql_sc_run(store, small_db)
    dom = Dom(render_run(store, run_id))
    assert steps(dom) == node_order(store, run_id)
    execs = dom.root.find_all("div", cls="sql_exec")
    assert len(execs) == 4
    assert "SELECT nope FROM singer" in execs[3].text() and execs[3].find_all("span", cls="bad")
    (vote,) = dom.root.find_all("div", cls="vote")
    rows = vote_rows(vote.find_all("table")[0])
    assert [r[1] for r in rows] == ["2", "1"] and rows[0][2] and not rows[1][2]
    winner = vote.find_all("tr", cls="winner")[0].text()  # the queries behind the winning result
    assert "SELECT COUNT(*) FROM singer" in winner and "select count(id) from singer" in winner
    assert "SELECT name FROM singer" not in winner


async def test_model_output_is_escaped(store):
    run_id = await self_consistency_run(store, [f"The answer is 5 {HOSTILE}", "The answer is 5"],
                                        task=f"What is 2+3? {HOSTILE}")
    page = render_run(store, run_id)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    dom = Dom(page)
    assert not dom.root.find_all("script")
    (call,) = dom.root.find_all("details", cls="call")
    assert HOSTILE in call.text()  # shown as text, in the response and in the request


@pytest.mark.both_stores
async def test_tampered_event_is_shown(store, tamper):
    run_id = await self_consistency_run(store)
    (seq, body), = tamper("SELECT seq, body FROM events WHERE run_id=? AND type='vote'", (run_id,))
    data = json.loads(body)
    data["winner"] = "7"
    tamper("UPDATE events SET body=? WHERE run_id=? AND seq=?", (json.dumps(data), run_id, seq))
    dom = Dom(render_run(store, run_id))
    (status,) = dom.root.find_all(id="verify")
    assert status.attrs["data-ok"] == "false" and status.attrs["data-bad-seq"] == str(seq)
    assert f"BROKEN at event {seq}" in status.text() and "altered" in status.text()
    (bad,) = dom.root.find_all(cls="tampered")
    assert bad.attrs["id"] == f"e{seq}" and bad.attrs["data-type"] == "vote"
    assert "broke the chain" in bad.text()


@pytest.mark.both_stores
async def test_unparseable_tampered_body_still_renders(store, tamper):
    run_id = await self_consistency_run(store)
    tamper("UPDATE events SET body='{not json' WHERE run_id=? AND seq=1", (run_id,))
    dom = Dom(render_run(store, run_id))
    assert dom.root.find_all(id="verify")[0].attrs["data-bad-seq"] == "1"
    assert "{not json" in dom.root.find_all(cls="tampered")[0].text()


@pytest.mark.both_stores
async def test_cli_writes_the_page(store, tmp_path):
    run_id = await self_refine_run(store)
    target = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["trace", "html", run_id[:10], "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert steps(Dom(target.read_text(encoding="utf-8"))) == node_order(store, run_id)
    missing = CliRunner().invoke(app, ["trace", "html", "nosuchrun", "-o", str(target)])
    assert missing.exit_code == 2


# -- in a browser -------------------------------------------------------------------------


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def png_pixels_vary(path: Path) -> tuple[int, int, bool]:
    """(width, height, whether the image has more than one colour) of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    try:
        from matplotlib import image
    except ImportError:
        image = None
    if image is not None:
        pixels = image.imread(str(path))
        return width, height, bool((pixels != pixels[0, 0]).any())
    # stdlib only: a one-colour image filters to a handful of distinct bytes
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat))) > 16


@pytest.mark.skipif(chromium() is None, reason=needs("Chromium", "no chromium or chromium-browser on the PATH"))
async def test_page_renders_in_headless_chromium(store, small_db, tmp_path):
    run_id = await sql_sc_run(store, small_db)
    page = write_html(store, run_id, tmp_path / "run.html")
    base = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dumped = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)
    assert steps(dom) == node_order(store, run_id)
    assert dom.root.find_all(id="verify")[0].attrs["data-ok"] == "true"
    winner = vote_rows(dom.root.find_all("div", cls="vote")[0].find_all("table")[0])[0]
    assert winner[1:] == ("2", True)
    shot = tmp_path / "run.png"
    taken = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    width, height, varied = png_pixels_vary(shot)
    assert (width, height) == (1200, 2000) and varied
