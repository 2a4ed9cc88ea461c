"""The primary's right of way over shadow traffic on one `ggufops serve`.

Every client request (primary or canary, any model of the server: they share the CPU)
holds `PrimaryTraffic.request()` while it runs. The shadow worker starts a mirrored request
only after a quiet spell (`wait_quiet`): QUIET_S seconds in which no client request started
or ended and none is in flight. Under steady load the gap between one client's answer and
its next request is far shorter, and a shadow started in it would only be aborted a token
later, having taken CPU and the GIL from the client. The worker polls (a few wake-ups per
second) instead of being notified, so client requests pay two counter updates, nothing
more. The shadow's generation checks `arrived_since` before its prompt and at every token:
a client request that arrived since the generation began aborts it (shadow.py counts it as
preempted and drops it; it is never retried), even one that was whole between two checks:
on a busy machine a short client request can start and end while the shadow waits for the
CPU, and sampling the in-flight count alone missed it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

QUIET_S = 0.05  # how long the server must have been without client requests before a shadow


class PrimaryTraffic:
    """How many client requests are in flight on this server, and a way to wait for quiet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._changes = 0  # client requests started plus ended: tells a quiet spell apart

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold while one client request runs."""
        self._count(+1)
        try:
            yield
        finally:
            self._count(-1)

    def _count(self, step: int) -> None:
        with self._lock:
            self._in_flight += step
            self._changes += 1

    def mark(self) -> int:
        """Where the count of client request starts and ends is now (for arrived_since)."""
        return self._changes

    def arrived_since(self, mark: int) -> bool:
        """Whether a client request is in flight, or started (and maybe ended) since
        `mark` was taken (two int loads, no lock)."""
        return self._in_flight > 0 or self._changes != mark

    def _snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self._in_flight, self._changes

    def wait_quiet(self, quiet: float = QUIET_S) -> None:
        """Block until a whole `quiet`-second spell passed with no client request in flight."""
        seen = -1
        while True:
            in_flight, changes = self._snapshot()
            if in_flight == 0 and changes == seen:
                return
            seen = changes
            time.sleep(quiet)
