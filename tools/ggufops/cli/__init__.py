"""The click layer: parse arguments, call the API, print. Nothing else lives here.

Subcommands are imported only when they run (or when help lists them), so a quick
command such as `rollback --push` does not pay for numpy, llama.cpp or boto3 imports.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from ggufops import __version__
from ggufops.error_handler import Exit, error_handler
from ggufops.errors import MissingExtra
from ggufops.extras import as_missing_extra

# command name -> "module:attribute" under ggufops.cli
COMMANDS = {
    "validate": "registry_cmds:validate",
    "list": "registry_cmds:list_versions",
    "show": "registry_cmds:show",
    "s3": "s3:s3",
    "register": "artifact_cmds:register",
    "pull": "artifact_cmds:pull",
    "toy": "gates:toy_cmd",
    "bench": "gates:bench_cmd",
    "gate": "gates:gate_cmd",
    "deploy": "gitops:deploy",
    "rollback": "gitops:rollback",
    "config": "config:config",
    "history": "gitops:history",
    "pr-comment": "gitops:pr_comment",
    "serve": "runtime:serve",
    "agent": "runtime:agent",
    "publish-head": "runtime:publish_head",
    "demo": "demo:demo",
    "fleet": "fleet:fleet",
    "deprecate": "lifecycle:deprecate",
    "archive": "lifecycle:archive",
    "restore": "lifecycle:restore",
    "ab": "ab:ab",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(f"ggufops.cli.{module_name}")
        except ModuleNotFoundError as e:
            missing = as_missing_extra(e, cmd_name)
            if missing is None:
                raise
            return _needs_extra(cmd_name, missing)
        command: click.Command = getattr(module, attribute)
        return command

    def invoke(self, ctx: click.Context) -> object:
        show_tb = "--traceback" in sys.argv or os.environ.get("GGUFOPS_TRACEBACK") == "1"
        try:
            with error_handler(show_traceback=show_tb):
                return _invoke_naming_extras(ctx, lambda: super(_Group, self).invoke(ctx))
        except Exit as e:
            ctx.exit(e.code)


def _invoke_naming_extras(ctx: click.Context, invoke: Callable[[], object]) -> object:
    """Run a command; a library of a missing optional extra becomes a one-line error."""
    try:
        return invoke()
    except ModuleNotFoundError as e:
        missing = as_missing_extra(e, ctx.invoked_subcommand)
        if missing is None:
            raise
        raise missing from e


def _needs_extra(name: str, missing: MissingExtra) -> click.Command:
    """A stand-in for a command whose extra is not installed: help says so, running fails."""

    def fail(**_: object) -> None:
        raise missing

    return click.Command(name, callback=fail, help=str(missing),
                         context_settings={"ignore_unknown_options": True},
                         params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)])


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
