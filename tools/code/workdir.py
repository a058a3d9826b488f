"""The fresh work folder of one run: made, filled with the program and its files, removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from refinegraph.tools.code.identity import Identity
from refinegraph.tools.code.limits import PROGRAM


def _check_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or str(path) == PROGRAM:
        raise ValueError(f"file name {name!r}: must be a relative path inside the work folder, not {PROGRAM}")
    return path


def check_names(files: dict[str, str] | None) -> dict[str, PurePosixPath]:
    """Each file's relative path, or ValueError for a name outside the work folder (the
    caller's error, raised whether or not anything could run)."""
    return {name: _check_name(name) for name in files or {}}


@contextlib.contextmanager
def work_folder(identity: Identity, source: str, files: dict[str, str] | None) -> Iterator[Path]:
    """A tempfile.mkdtemp folder holding main.py and `files`, owned by the sandbox user;
    removed afterwards whatever the program left in it."""
    names = check_names(files)
    root = Path(tempfile.mkdtemp(prefix="refinegraph-code-"))
    try:
        identity.give(root)
        for name, relative in names.items():
            target = root / relative
            for parent in reversed(target.relative_to(root).parents[:-1]):
                (root / parent).mkdir(exist_ok=True)
                identity.give(root / parent)
            target.write_text(files[name], encoding="utf-8")  # type: ignore[index]
            identity.give(target)
        program = root / PROGRAM
        program.write_text(source, encoding="utf-8")
        identity.give(program)
        yield root
    finally:
        remove(root)


def remove(root: Path) -> None:
    """Delete the folder even where the program took away its own permissions."""
    def unlock(function, path, excinfo) -> None:
        parent = os.path.dirname(path)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, stat.S_IRWXU)
            shutil.rmtree(path, onerror=unlock)
        else:
            os.unlink(path)

    shutil.rmtree(root, onerror=unlock)
