"""Options shared by several commands, as decorators."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ggufops.registry.registry import Registry, VersionRef

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON instead of text.")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Show what would change and change nothing.")


def registry_from(ctx: click.Context) -> Registry:
    """The registry the command works on: --repo, or found from the current directory."""
    return Registry.discover(ctx.find_root().obj["repo"])


def repo_path(ctx: click.Context) -> Path:
    path: Path = ctx.find_root().obj["repo"]
    return path


class VersionRefType(click.ParamType):  # type: ignore[type-arg]
    name = "NAME@X.Y.Z"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> VersionRef:
        if isinstance(value, VersionRef):
            return value
        try:
            return VersionRef.parse(str(value))
        except Exception as e:  # BadReference: shown as a usage error by click
            self.fail(str(e), param, ctx)


VERSION_REF = VersionRefType()


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
