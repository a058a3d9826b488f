"""Writing a benchmark's report.json and report.md, and facts about the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def environment(packages: tuple[str, ...] = ("refinegraph", "langgraph")) -> dict[str, Any]:
    """Enough about the machine and versions to compare two reports honestly."""
    versions = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "versions": versions,
            "at": datetime.now(UTC).isoformat(timespec="seconds")}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out_dir: Path, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """report.json (everything measured) and report.md (what was printed) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return json_path, md_path


def command_line(ctx: Any) -> str:
    """The command that is running (its typer/click context), rebuilt from the parsed options
    (every option not at its default), so that a report says exactly how to make it again."""
    import shlex

    path = ctx.command_path.split()
    words = ["refinegraph", *path[1:]]
    for param in ctx.command.params:
        if getattr(param, "param_type_name", "") != "option" or param.name not in ctx.params:
            continue
        value = ctx.params[param.name]
        if value is None or value == param.default or value in ((), []):
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            words.append(flag if value else (param.secondary_opts or [flag])[0])
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            words += [flag, str(item)]
    return " ".join(shlex.quote(w) for w in words)
