"""Packaged models assembled from parts: on small fake parts made here, never the real ones."""

from __future__ import annotations

import hashlib
import os
import stat
import textwrap
import threading
import time
from pathlib import Path

import pytest

from refinegraph.models import ModelUnavailable, packaged
from refinegraph.models.packaged import ModelAssemblyError, PackagedModel, assemble

PART_BYTES = 300_000  # not a multiple of the chunk size used below, so chunks straddle parts


def make_parts(folder: Path, count: int = 3) -> tuple[list[Path], bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, whole = [], b""
    for i in range(count):
        data = os.urandom(PART_BYTES - 1000 * i)
        path = folder / f"part{i + 1:02d}.bin"
        path.write_bytes(data)
        paths.append(path)
        whole += data
    return paths, whole


def fake_model(whole: bytes, count: int = 3, **overrides) -> PackagedModel:
    fields = dict(name="fake", title="Fake-1B", file_name="fake.gguf", size=len(whole),
                  sha256=hashlib.sha256(whole).hexdigest(), parts=tuple(f"fake_part{i}" for i in range(1, count + 1)),
                  distributions=tuple(f"fake-part{i}" for i in range(1, count + 1)), version="1.0", extra="fake")
    return PackagedModel(**{**fields, **overrides})


def locator(paths: list[Path]):
    by_module = {f"fake_part{i + 1}": p for i, p in enumerate(paths)}
    return lambda module: by_module.get(module)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(packaged, "CHUNK_BYTES", 64 * 1024)


def test_parts_are_streamed_into_one_checked_file(tmp_path):
    paths, whole = make_parts(tmp_path / "parts")
    cache = tmp_path / "cache"
    target = assemble(fake_model(whole), cache=cache, locate=locator(paths))
    assert target == cache / "fake.gguf" and target.read_bytes() == whole
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not list(cache.glob("*.partial"))
    # The second use finds the file: the parts are not read again.
    assert assemble(fake_model(whole), cache=cache, locate=lambda module: None) == target


def test_the_default_locator_asks_each_part_package(tmp_path, monkeypatch):
    """A part package is found by import and its own get_part_path(), as the real ones are."""
    paths, whole = make_parts(tmp_path / "parts", count=2)
    for i, path in enumerate(paths, start=1):
        pkg = tmp_path / "site" / f"fake_part{i}"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(textwrap.dedent(f"""
            def get_part_path():
                return {str(path)!r}
        """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("REFINEGRAPH_MODEL_CACHE", str(tmp_path / "cache"))
    model = fake_model(whole, count=2)
    assert packaged.is_installed(model)
    assert not packaged.is_installed(fake_model(whole, count=3))
    assert assemble(model).read_bytes() == whole


def test_a_missing_part_names_the_exact_install_command(tmp_path):
    paths, whole = make_parts(tmp_path / "parts")
    paths[1].unlink()
    with pytest.raises(ModelUnavailable) as info:
        assemble(fake_model(whole), cache=tmp_path / "cache", locate=locator(paths))
    message = str(info.value)
    assert "pip install fake-part2==1.0\n" in message + "\n"
    assert "fake-part1==" not in message and "refinegraph[fake]" in message
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_a_wrong_checksum_is_refused_and_leaves_nothing(tmp_path):
    paths, whole = make_parts(tmp_path / "parts")
    model = fake_model(whole, sha256="0" * 64)
    with pytest.raises(ModelAssemblyError, match="sha256 is .* expected 0000"):
        assemble(model, cache=tmp_path / "cache", locate=locator(paths))
    assert list((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / "fake.gguf.lock"]


def test_a_wrong_size_is_refused(tmp_path):
    paths, whole = make_parts(tmp_path / "parts")
    with pytest.raises(ModelAssemblyError, match=f"make {len(whole)} bytes, expected {len(whole) + 1}"):
        assemble(fake_model(whole, size=len(whole) + 1), cache=tmp_path / "cache", locate=locator(paths))
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_an_assembly_cut_midway_is_never_used(tmp_path, monkeypatch):
    """A part that fails mid-read (a process killed, a disk error) leaves no file at the final name."""
    paths, whole = make_parts(tmp_path / "parts")
    cache = tmp_path / "cache"
    real_open = Path.open

    def failing_open(self, *args, **kwargs):
        if self == paths[2]:
            raise OSError("disk gone")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", failing_open)
    with pytest.raises(OSError, match="disk gone"):
        assemble(fake_model(whole), cache=cache, locate=locator(paths))
    monkeypatch.setattr(Path, "open", real_open)
    assert not (cache / "fake.gguf").exists() and not list(cache.glob("*.partial"))

    # What a killed process leaves (a partial file, a truncated copy at the final name) is not used.
    (cache / "fake.gguf.x1y2.partial").write_bytes(whole[:1000])
    (cache / "fake.gguf").write_bytes(whole[:-5])
    target = assemble(fake_model(whole), cache=cache, locate=locator(paths))
    assert target.read_bytes() == whole and not list(cache.glob("*.partial"))


def test_concurrent_assemblers_assemble_once(tmp_path, monkeypatch):
    paths, whole = make_parts(tmp_path / "parts")
    cache = tmp_path / "cache"
    real = packaged._concatenate
    calls: list[int] = []

    def slow_concatenate(parts, handle):
        calls.append(1)
        time.sleep(0.3)  # wide enough a window for every other assembler to arrive meanwhile
        return real(parts, handle)

    monkeypatch.setattr(packaged, "_concatenate", slow_concatenate)
    barrier = threading.Barrier(4)
    results: list[Path | BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(assemble(fake_model(whole), cache=cache, locate=locator(paths)))
        except BaseException as exc:  # handed to the assertion below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [cache / "fake.gguf"] * 4
    assert len(calls) == 1
    assert (cache / "fake.gguf").read_bytes() == whole


def test_unknown_packaged_name_lists_the_known_ones():
    with pytest.raises(ModelUnavailable, match="qwen2.5-coder-1.5b"):
        packaged.packaged_model("gpt-5")


def test_the_default_model_follows_what_is_installed(monkeypatch):
    monkeypatch.delenv("REFINEGRAPH_LOCAL_MODEL", raising=False)
    monkeypatch.setattr(packaged, "is_installed", lambda model: model.name == "qwen2.5-coder-1.5b")
    monkeypatch.setattr(packaged, "physical_memory_mb", lambda: 16000)
    assert packaged.default_model_name() == "qwen2.5-coder-1.5b"
    monkeypatch.setattr(packaged, "physical_memory_mb", lambda: 2000)  # too small for the 1.5B model
    assert packaged.default_model_name() == "smollm2-135m"
    monkeypatch.setattr(packaged, "physical_memory_mb", lambda: 16000)
    monkeypatch.setattr(packaged, "is_installed", lambda model: False)
    assert packaged.default_model_name() == "smollm2-135m"
    monkeypatch.setenv("REFINEGRAPH_LOCAL_MODEL", "qwen2.5-coder-0.5b")
    assert packaged.default_model_name() == "qwen2.5-coder-0.5b"


def test_the_test_suite_runs_on_smollm2():
    """conftest pins the fast suite's embedded model, whatever else this machine has installed."""
    from refinegraph.models import LocalModel
    assert os.environ["REFINEGRAPH_LOCAL_MODEL"] == "smollm2-135m"
    assert LocalModel("local").model == "smollm2-135m"


def test_a_gguf_path_is_taken_as_is(tmp_path):
    from refinegraph.models import LocalModel
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    model = LocalModel("local", model_path=gguf)
    assert model.model == "mine.gguf" and model.title == "mine.gguf"
    with pytest.raises(ModelUnavailable, match="no such file"):
        LocalModel("local", model_path=tmp_path / "absent.gguf")
