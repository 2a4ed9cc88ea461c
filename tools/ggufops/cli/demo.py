"""`ggufops demo`: the whole story, end to end, on the embedded defaults."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import click

from ggufops.demo import story as demo_api
from ggufops.errors import DemoFailed


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run in this directory and keep it (default: a temporary one, removed after).")
@click.option("--keep", is_flag=True, help="Keep the temporary directory to look at afterwards.")
def demo(workdir: Path | None, keep: bool) -> None:
    """Run the whole story: S3, registry, register, serve, agent, deploy, gate, rollback."""
    for sig in (signal.SIGTERM, signal.SIGHUP):  # `timeout`, systemd, a closed terminal
        signal.signal(sig, _interrupt)
    steps = demo_api.run_demo(workdir, keep=keep)
    failed = [s.title for s in steps if not s.ok]
    if failed:
        raise DemoFailed(f"step failed: {failed[0]}")
    click.echo("demo finished: every step passed")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Stop like Ctrl-C does, so the demo stops the S3 server, serve and agent it started."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


COMMANDS: list[click.Command] = [demo]
