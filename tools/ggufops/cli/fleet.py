"""`ggufops fleet status`: what every host of an environment serves, against git."""

from __future__ import annotations

import os

import click

from ggufops.cli.options import json_option, print_json, registry_from


@click.group("fleet")
def fleet() -> None:
    """The hosts of an environment, as their agents report them to S3."""


@fleet.command("status")
@click.option("--env", "env", required=True, metavar="ENV",
              help="Environment whose hosts to show (environments/ENV.yaml).")
@click.option("--stale-after", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds after which a host that has not reported counts as stale.")
@click.option("--ref", default=None, metavar="REF",
              help="Commit whose environment file is desired (default: the branch head on "
              "the remote, fetched first).")
@click.option("--remote", default="origin", show_default=True, help="Git remote to fetch.")
@click.option("--branch", default="main", show_default=True, help="Branch the agents follow.")
@click.option("--no-fetch", is_flag=True, help="Do not fetch; use the local remote-tracking "
              "branch.")
@click.option("--github-status", is_flag=True, help="Also set the commit status "
              "`ggufops/ENV` on the environment's commit (GITHUB_TOKEN, GITHUB_REPOSITORY).")
@json_option
@click.pass_context
def fleet_status(ctx: click.Context, *, env: str, stale_after: float, ref: str | None,
                 remote: str, branch: str, no_fetch: bool, github_status: bool,
                 as_json: bool) -> None:
    """Hosts with drift (env file at the branch head vs what each serves) and staleness.

    Exit 0: every host serves the environment file; 4: drift; 5: a host is stale or stopped
    (or none reported) and none drifts.
    """
    from ggufops.fleet import ops as fleetops
    from ggufops.fleet import view as fleetview

    root = registry_from(ctx).root
    fleet_view = fleetops.fleet_status(root, env, ref=ref, remote=remote, branch=branch,
                                       fetch=not no_fetch, stale_after=stale_after)
    if github_status:
        fleetops.post_commit_status(fleet_view, os.environ, root, remote)
    if as_json:
        print_json(fleet_view.as_dict())
    else:
        click.echo(fleetview.format_view(fleet_view))
    fleet_view.raise_if_not_converged()  # exit 4 (drift) or 5 (stale); the table says why


COMMANDS: list[click.Command] = [fleet]
