"""The primary's right of way over shadow traffic on one `ggufops serve`.

Every client request (primary or canary, any model of the server: they share the CPU)
holds `PrimaryTraffic.request()` while it runs. The shadow worker starts a mirrored request
only when none is in flight (`wait_idle`), and its generation checks `busy` before its
prompt and at every token: a client request arriving aborts it (shadow.py counts it as
preempted and drops it; it is never retried).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class PrimaryTraffic:
    """How many client requests are in flight on this server, and a way to wait for none."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._in_flight = 0

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold while one client request runs."""
        with self._idle:
            self._in_flight += 1
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
