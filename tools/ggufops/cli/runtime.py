"""`ggufops serve`, `agent`, `demo`: what runs on an inference host."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

_DIR = click.Path(file_okay=False, path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM, SIGINT or SIGHUP (systemd stop, Ctrl-C)."""
    stop = threading.Event()
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _announce(what: str) -> None:
    click.echo(what)
    sys.stdout.flush()


log_level_option = click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
    show_default=True, help="Messages written to stderr (the journal under systemd).")
admin_token_option = click.option(
    "--admin-token-file", type=_FILE, default=None, envvar="GGUFOPS_ADMIN_TOKEN_FILE",
    help="File holding the bearer token of the server's admin API "
    "(env GGUFOPS_ADMIN_TOKEN_FILE).")


@click.command("serve")
@click.option("--store", required=True, type=_DIR, envvar="GGUFOPS_STORE",
              help="Content-addressed artifact store: models load from <store>/sha256/<sha>.gguf.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")
@admin_token_option
@click.option("--threads", type=click.IntRange(1), default=None,
              help="llama.cpp threads per model (default: all cores this process may use).")
@click.option("--ctx", type=int, default=4096, show_default=True,
              help="Context size per model, capped at the model's own (0: the model's).")
@log_level_option
def serve(*, store: Path, host: str, port: int, admin_token_file: Path | None,
          threads: int | None, ctx: int, log_level: str) -> None:
    """Serve GGUF models over an OpenAI-compatible HTTP API with zero-downtime swaps."""
    from ggufops import server

    _logging(log_level)
    token = server.read_token(admin_token_file) if admin_token_file else None
    config = server.ServeConfig(store=store, host=host, port=port, admin_token=token,
                                n_threads=threads, n_ctx=ctx)
    app = server.App(config)
    with _stop_on_signals() as stop:
        server.serve_until(app, stop, ready=lambda url: _announce(
            f"ggufops serve: listening on {url} (store {store}; admin API "
            f"{'on' if token else 'off: no --admin-token-file'})"))


COMMANDS: list[click.Command] = [serve]
