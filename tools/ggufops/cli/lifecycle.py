"""`ggufops deprecate`, `archive`, `restore`: a version's status, as a reviewed git change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ggufops.cli.gitops import _landing_text, _show, git_target_options
from ggufops.cli.options import VERSION_REF, dry_run_option, json_option, registry_from
from ggufops.gitops import lifecyclechange as change_api
from ggufops.registry import lifecycle
from ggufops.registry.registry import VersionRef

F = TypeVar("F", bound=Callable[..., Any])


def landing_options(func: F) -> F:
    """--push / --pr / --direct, as deploy has them."""
    func = click.option("--direct", is_flag=True, help="Commit on the default branch itself "
                        "instead of a lifecycle branch (repositories without pull "
                        "requests, the demo).")(func)
    func = click.option("--pr", is_flag=True, help="Push the branch and open a pull request "
                        "(GitHub REST API with GITHUB_TOKEN; else print the compare URL).")(func)
    return click.option("--push", is_flag=True, help="Push the lifecycle branch (or, with "
                        "--direct, the default branch) to the remote.")(func)


def _run(ctx: click.Context, request: change_api.StatusRequest, dry_run: bool,
         as_json: bool) -> None:
    root = registry_from(ctx).root
    plan = change_api.plan_status_change(root, request)
    if dry_run:
        _show(as_json, {**plan.as_dict(), "dry_run": True}, change_api.describe(plan))
        return
    landing = change_api.apply_status_change(root, plan)
    _show(as_json, {**plan.as_dict(), "dry_run": False, "result": landing.as_dict()},
          change_api.describe(plan) + "\n" + _landing_text(landing, plan.remote))


@click.command("deprecate")
@click.argument("ref", type=VERSION_REF)
@click.option("--reason", required=True, metavar="TEXT",
              help="Why it is deprecated: recorded in lifecycle.yaml and shown to whoever "
              "deploys it next.")
@landing_options
@git_target_options
@dry_run_option
@json_option
@click.pass_context
def deprecate(ctx: click.Context, *, ref: VersionRef, reason: str, push: bool, pr: bool,
              direct: bool, remote: str, default_branch: str, dry_run: bool,
              as_json: bool) -> None:
    """Mark NAME@X.Y.Z deprecated: deploying it then warns (or fails, with policy
    lifecycle.deprecated: block). Appends to registry/NAME/lifecycle.yaml."""
    _run(ctx, change_api.StatusRequest(ref, lifecycle.DEPRECATED, reason, remote,
                                       default_branch, direct, push, pr), dry_run, as_json)


@click.command("archive")
@click.argument("ref", type=VERSION_REF)
@click.option("--reason", default=None, metavar="TEXT", help="Why: recorded in lifecycle.yaml.")
@click.option("--cold", is_flag=True, help="Also move its object to the cold tier "
              "(policy retention.cold_remote): copied, sha256-verified, then removed from the "
              "warm remote. Refused while an environment may still roll back to it.")
@landing_options
@git_target_options
@dry_run_option
@json_option
@click.pass_context
def archive(ctx: click.Context, *, ref: VersionRef, reason: str | None, cold: bool, push: bool,
            pr: bool, direct: bool, remote: str, default_branch: str, dry_run: bool,
            as_json: bool) -> None:
    """Mark NAME@X.Y.Z archived: it can no longer be deployed or rolled back to until
    `ggufops restore`. Refused while an environment runs it."""
    _run(ctx, change_api.StatusRequest(ref, lifecycle.ARCHIVED, reason, remote,
                                       default_branch, direct, push, pr, cold), dry_run,
         as_json)


@click.command("restore")
@click.argument("ref", type=VERSION_REF)
@click.option("--reason", default=None, metavar="TEXT", help="Why: recorded in lifecycle.yaml.")
@landing_options
@git_target_options
@dry_run_option
@json_option
@click.pass_context
def restore(ctx: click.Context, *, ref: VersionRef, reason: str | None, push: bool, pr: bool,
            direct: bool, remote: str, default_branch: str, dry_run: bool,
            as_json: bool) -> None:
    """Undo the newest archive (else deprecation) of NAME@X.Y.Z: an archived version comes
    back deprecated if it was deprecated before, else at the stage where it ran. An object
    only in the cold tier is first copied back to the warm one and verified."""
    _run(ctx, change_api.StatusRequest(ref, lifecycle.RESTORED, reason, remote,
                                       default_branch, direct, push, pr), dry_run, as_json)


COMMANDS: list[click.Command] = [deprecate, archive, restore]
