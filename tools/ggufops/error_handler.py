"""The one place that turns exceptions into messages and exit codes.

0 ok, 1 check failed / expected error, 2 usage, 3 unexpected; `fleet status`: 4 drift, 5 stale
(errors.FleetNotConverged, errors.FleetStale).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import TextIO

import click

from ggufops.errors import CheckFailed, GgufopsError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNEXPECTED = 3


class Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def error_handler(*, show_traceback: bool, stream: TextIO | None = None) -> Iterator[None]:
    """Print an expected error as one line, anything else with a hint; raise Exit."""
    out = stream if stream is not None else sys.stderr
    try:
        yield
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise  # click prints these itself (usage errors exit 2)
    except CheckFailed as e:
        if str(e):
            print(f"error: {e}", file=out)
        raise Exit(e.exit_code) from e
    except GgufopsError as e:
        print(f"error: {e}", file=out)
        if show_traceback:
            traceback.print_exc(file=out)
        raise Exit(e.exit_code) from e
    except KeyboardInterrupt as e:
        print("interrupted", file=out)
        raise Exit(130) from e
    except Exception as e:
        if show_traceback:
            traceback.print_exc(file=out)
        print(
            f"unexpected error: {type(e).__name__}: {e} (run again with --traceback for details)",
            file=out,
        )
        raise Exit(EXIT_UNEXPECTED) from e
