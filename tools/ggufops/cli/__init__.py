"""The click layer: parse arguments, call the API, print. Nothing else lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ggufops import __version__
from ggufops.cli import artifacts, gates, gitops, registry_cmds, runtime, s3
from ggufops.error_handler import Exit, error_handler


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        show_tb = "--traceback" in sys.argv or os.environ.get("GGUFOPS_TRACEBACK") == "1"
        try:
            with error_handler(show_traceback=show_tb):
                return super().invoke(ctx)
        except Exit as e:
            ctx.exit(e.code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ggufops", help="Show the version and exit.")
@click.option("--repo", "-C", "repo", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Registry checkout to work in (default: the current directory).")
@click.option("--traceback", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def main(ctx: click.Context, repo: Path | None, traceback: bool) -> None:
    """ggufops: a GitOps model registry and deployment system for llama.cpp models."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    ctx.ensure_object(dict)
    ctx.obj["repo"] = repo or Path.cwd()


for _module in (registry_cmds, s3, artifacts, gates, gitops, runtime):
    for _command in _module.COMMANDS:
        main.add_command(_command)
