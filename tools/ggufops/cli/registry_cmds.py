"""`ggufops validate`, `ggufops list`, `ggufops show`: reading the registry."""

from __future__ import annotations

from pathlib import Path

import click

from ggufops.cli.options import VERSION_REF, json_option, print_json, registry_from
from ggufops.errors import CheckFailed
from ggufops.registry import catalog
from ggufops.registry import validate as validate_api
from ggufops.registry.compat import HostRuntimes
from ggufops.registry.registry import VersionRef


@click.command("validate")
@click.option("--base", metavar="REF", default=None,
              help="Also check immutability and promotion order against this git ref "
              "(e.g. origin/main).")
@click.option("--check-artifacts", is_flag=True,
              help="Check that every version an environment runs has its object in the "
              "S3 remote (HEAD requests, no download).")
@click.option("--check-fleet", is_flag=True,
              help="Check that every host of each environment (fleet/<env>/*.json in S3) "
              "reports a llama-cpp-python new enough for the versions it runs.")
@json_option
@click.pass_context
def validate(ctx: click.Context, base: str | None, check_artifacts: bool, check_fleet: bool,
             as_json: bool) -> None:
    """Check every registry file: schemas, references, immutability, promotion order,
    prompt configs and (--check-fleet) host runtimes."""
    registry = registry_from(ctx)
    warnings: list[validate_api.Problem] = []
    find_missing = _missing_objects() if check_artifacts else None
    host_runtimes = _host_runtimes(registry.root) if check_fleet else None
    problems = validate_api.validate_repo(registry.root, base=base, find_missing=find_missing,
                                          warnings=warnings, host_runtimes=host_runtimes)
    if as_json:
        print_json({"valid": not problems, "problems": [p.as_dict() for p in problems],
                    "warnings": [w.as_dict() for w in warnings]})
    else:
        for problem in problems:
            click.echo(str(problem))
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
    if problems:
        raise CheckFailed("" if as_json else f"{len(problems)} problem(s) found")
    if not as_json:
        click.echo(f"ok: {registry.root} is valid")


@click.command("list")
@json_option
@click.pass_context
def list_versions(ctx: click.Context, as_json: bool) -> None:
    """List every registered version and the environments that run it."""
    rows = catalog.list_versions(registry_from(ctx))
    if as_json:
        print_json([r.as_dict() for r in rows])
        return
    click.echo(catalog.format_table(rows))


@click.command("show")
@click.argument("ref", type=VERSION_REF)
@json_option
@click.pass_context
def show(ctx: click.Context, ref: VersionRef, as_json: bool) -> None:
    """Show one version's file, its display id and where it runs."""
    registry = registry_from(ctx)
    info = catalog.describe(registry, ref)
    if as_json:
        print_json(info)
        return
    click.echo(catalog.format_description(info))


COMMANDS = [validate, list_versions, show]


def _missing_objects() -> validate_api.MissingObjects:
    from ggufops.artifacts import dvc  # lazy: plain `validate` does not load S3 code

    return dvc.missing_objects


def _host_runtimes(root: Path) -> HostRuntimes:
    from ggufops.fleet import compat as fleet_compat  # lazy: S3 code only for --check-fleet

    return fleet_compat.host_runtimes_reader(root)
