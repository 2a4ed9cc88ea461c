"""`ggufops s3 serve`, `ggufops s3 env`: the embedded S3 server (SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import click

from ggufops.artifacts import s3config, s3server
from ggufops.cli.options import json_option, print_json, repo_path
from ggufops.error_handler import Exit
from ggufops.errors import NotARegistry, UsageError
from ggufops.registry.registry import find_root

state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Server state: data, credentials, log (default: <repo>/.ggufops/s3).",
)  # fmt: skip


def _root(ctx: click.Context) -> Path:
    """The registry checkout at or above --repo / the current directory, else that dir."""
    start = repo_path(ctx)
    try:
        return find_root(start)
    except NotARegistry:
        return start


def _state_dir(ctx: click.Context, state_dir: Path | None) -> Path:
    return state_dir or s3server.default_state_dir(_root(ctx))


@click.group("s3")
def s3() -> None:
    """The embedded S3 server (SeaweedFS on 127.0.0.1) that holds the artifacts."""


@s3.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), default=s3server.DEFAULT_PORT,
              show_default=True, help="S3 port on 127.0.0.1 (0: any free port).")
@state_dir_option
@click.option("--write-dvc-local/--no-write-dvc-local", default=True, show_default=True,
              help="Write the endpoint and credentials into .dvc/config.local (remote models).")
@click.pass_context
def serve(ctx: click.Context, port: int, state_dir: Path | None, write_dvc_local: bool) -> None:
    """Run SeaweedFS in the foreground until Ctrl-C; print the endpoint (never the secret:
    this output lands in logs and journals; `ggufops s3 env` prints the credentials)."""
    server = s3server.S3Server(_state_dir(ctx, state_dir), port=port or None)
    server.start()
    info = server.info()
    click.echo(f"S3 endpoint {info.endpoint} (bucket {info.bucket}), started in "
               f"{server.startup_seconds:.2f} s; state in {info.state_dir}")
    root = _root(ctx)
    if write_dvc_local and (root / ".dvc").is_dir():
        path = s3config.update_local_config(root, s3config.DEFAULT_REMOTE,
                                            info.dvc_local_values())
        click.echo(f"wrote endpointurl and credentials of remote 'models' to {path}")
    elif write_dvc_local:
        click.echo(f"no DVC repository at {root}: .dvc/config.local not written", err=True)
    click.echo(f"credentials for other tools (aws, boto3): eval \"$(ggufops s3 env "
               f"--state-dir {info.state_dir})\"")
    click.echo("press Ctrl-C to stop", err=True)
    code = s3server.run_foreground(server)
    click.echo("S3 server stopped", err=True)
    if code:
        click.echo(f"error: SeaweedFS exited with status {code}; see {server.log_path}", err=True)
        raise Exit(1)


@s3.command("env")
@state_dir_option
@json_option
@click.pass_context
def env(ctx: click.Context, state_dir: Path | None, as_json: bool) -> None:
    """Print `export ...` lines (credentials included) for the server on the state dir."""
    info = s3server.read_running(_state_dir(ctx, state_dir))
    if as_json:
        print_json({**info.env(), "endpoint": info.endpoint, "bucket": info.bucket})
        return
    for line in info.export_lines():
        click.echo(line)


COMMANDS: list[click.Command] = [s3]


@s3.command("remote")
@click.option("--endpoint-url", default=None, envvar="S3_ENDPOINT_URL",
              help="S3 endpoint of the models remote (env S3_ENDPOINT_URL).")
@click.option("--url", default=None, envvar="S3_URL",
              help="s3://BUCKET[/PREFIX] of the models remote (env S3_URL).")
@click.pass_context
def remote(ctx: click.Context, endpoint_url: str | None, url: str | None) -> None:
    """Point this clone's DVC remote `models` at an S3 server: writes .dvc/config.local like
    `dvc remote modify --local`, without installing DVC (the core install is enough)."""
    if not endpoint_url:
        raise UsageError("no S3 endpoint: pass --endpoint-url URL or set S3_ENDPOINT_URL")
    values = {"endpointurl": endpoint_url, **({"url": url} if url else {})}
    path = s3config.update_local_config(_root(ctx), s3config.DEFAULT_REMOTE, values)
    click.echo(f"remote {s3config.DEFAULT_REMOTE!r}: {', '.join(sorted(values))} set in {path}")
