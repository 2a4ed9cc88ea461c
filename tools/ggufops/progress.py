"""Progress of long artifact work (hashing, uploading, downloading) on stderr.

A bar appears only on a terminal and never when `CI` is set (or when asked not to, e.g.
with --json). Work is reported as phases: each phase gets its own bar with its name, the
bytes done, the rate and the time left (tqdm's). A `Reporter` is also the seam through
which a caller (a test, the agent) sees which phase runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

Progress = Callable[[int], None]


def wanted(explicit: bool | None) -> bool:
    """Explicit choice, else: only on a terminal (stderr) and never when CI is set."""
    if explicit is not None:
        return explicit
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return sys.stderr.isatty() and not ci


@contextmanager
def bar(enabled: bool, total: int | None, label: str) -> Iterator[Progress | None]:
    """A byte progress bar on stderr (None when disabled): call it with each byte count."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
              file=sys.stderr, leave=False) as progress_bar:
        yield progress_bar.update


class Reporter(Protocol):
    """Told when each phase of a long operation starts; returns the phase's byte counter."""

    def phase(self, name: str, total: int | None = None) -> Progress | None: ...

    def close(self) -> None: ...


class Quiet:
    """Reports nothing."""

    def phase(self, name: str, total: int | None = None) -> Progress | None:
        return None

    def close(self) -> None:
        return None


class Bars:
    """One tqdm bar per phase on stderr, labelled `<label>: <phase>`."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None

    def phase(self, name: str, total: int | None = None) -> Progress | None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=f"{self.label}: {name}", file=sys.stderr, leave=False,
                         disable=total is None)
        return self._bar.update if total is not None else None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def reporter(enabled: bool, label: str) -> Reporter:
    return Bars(label) if enabled else Quiet()
