"""The primary's right of way over shadow traffic on one `ggufops serve`.

Every client request (primary or canary, any model of the server: they share the CPU)
holds `PrimaryTraffic.request()` while it runs. The shadow worker starts a mirrored request
only when none has been in flight for QUIET_S (`wait_quiet`): under steady load the gap
between one client's answer and its next request is far shorter, and a shadow started in
it would only be aborted a token later, having taken CPU and the GIL from the client. Its
generation checks `busy` before its prompt and at every token: a client request arriving
aborts it (shadow.py counts it as preempted and drops it; it is never retried).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

QUIET_S = 0.05  # how long no client request must have been in flight before a shadow starts


class PrimaryTraffic:
    """How many client requests are in flight on this server, and a way to wait for none."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._in_flight = 0
        self._arrivals = 0  # client requests ever started: tells a quiet spell from a new one

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold while one client request runs."""
        with self._idle:
            self._in_flight += 1
            self._arrivals += 1
            self._idle.notify_all()
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.notify_all()

    def busy(self) -> bool:
        """Whether a client request is in flight (read without the lock: one int load)."""
        return self._in_flight > 0

    def wait_idle(self) -> None:
        """Block until no client request is in flight."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)

    def wait_quiet(self, quiet: float = QUIET_S) -> None:
        """Block until no client request has been in flight for `quiet` seconds."""
        with self._idle:
            while True:
                self._idle.wait_for(lambda: self._in_flight == 0)
                if not self._idle.wait_for(functools.partial(self._arrived_since,
                                                             self._arrivals), timeout=quiet):
                    return  # no request arrived during the quiet spell

    def _arrived_since(self, seen: int) -> bool:
        return self._arrivals != seen
