"""A root command whose subcommand groups (`trace`, `bench`, `route`, `sql`) are imported when
one of them runs.

Each group is a module of typer commands that costs tens of milliseconds to import and turn
into a command tree; `refinegraph graphs` or `refinegraph run` need none of them, and
`refinegraph --help` lists them from their name and help line alone. A group's module is
imported (once per process) when the group is resolved: invoked, asked for `--help`, or
completed by the shell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup


@dataclass(frozen=True)
class LazyGroup:
    help: str
    """The group's help, shown by the root's --help without importing it (the one place it is written)."""
    load: Callable[[], typer.Typer]
    """Imports the group's module(s) and returns its typer app."""


class LazyRoot(TyperGroup):
    """The root group; `groups` is set by `lazy_root(...)`."""

    groups: dict[str, LazyGroup] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, group in self.groups.items():  # placeholders: a name and a help line, for listings
            self.commands.setdefault(name, TyperGroup(name=name, help=group.help))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in self.groups:
            self.commands[args[0]] = _loaded(args[0], self.groups[args[0]])
        return super().resolve_command(ctx, args)


@cache
def _loaded(name: str, group: LazyGroup) -> TyperGroup:
    command = typer.main.get_command(group.load())
    command.name = name
    command.help = group.help
    return command  # type: ignore[return-value]


def lazy_root(groups: dict[str, LazyGroup]) -> type[LazyRoot]:
    """A LazyRoot class (for `typer.Typer(cls=...)`) that loads `groups` on use."""
    return type("Root", (LazyRoot,), {"groups": groups})
