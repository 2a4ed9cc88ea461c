"""`ggufops ab`: the versions of a model side by side, from every host's request window."""

from __future__ import annotations

from pathlib import Path

import click

from ggufops.cli.options import json_option, print_json, registry_from
from ggufops.errors import AbError
from ggufops.gitops import abtest

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


@click.command("ab")
@click.option("--env", "env", required=True, metavar="ENV",
              help="Environment whose primary version is the baseline of the comparisons.")
@click.option("--model", required=True, metavar="NAME", help="The model to report on.")
@click.option("--host", "hosts", multiple=True, required=True, metavar="URL",
              help="A host's `ggufops serve` URL; repeat for every host of the environment.")
@click.option("--token-file", type=_FILE, required=True, envvar="GGUFOPS_ADMIN_TOKEN_FILE",
              help="File holding the servers' admin token (env GGUFOPS_ADMIN_TOKEN_FILE).")
@click.option("--window", "window_s", type=click.FloatRange(min=1), default=3600.0,
              show_default=True, help="Seconds of requests to look at (the servers keep the "
              "newest 5,000 per version).")
@json_option
@click.pass_context
def ab(ctx: click.Context, /, *, env: str, model: str, hosts: tuple[str, ...],
       token_file: Path, window_s: float, as_json: bool) -> None:
    """Requests, error rate, latency, tokens and ratings per version, with significance."""
    entry = registry_from(ctx).environment_record(env).models.get(model)
    if entry is None:
        raise AbError(f"{env} does not run {model} (environments/{env}.yaml); "
                      "name a model it runs")
    report = abtest.collect(env, model, entry.version, hosts=list(hosts),
                            token=abtest.read_token(token_file), window_s=window_s)
    if as_json:
        print_json(report.as_dict())
    else:
        click.echo(abtest.render(report))


COMMANDS: list[click.Command] = [ab]
