"""Process plumbing shared by every room: children that die with us, and free ports.

One `die_with_parent`: a child started with it gets SIGTERM when its parent dies (Linux
prctl PR_SET_PDEATHSIG). SIGTERM, not SIGKILL, because our children clean up on it: the
agent's download child removes its temp file, SeaweedFS and DVC shut down cleanly.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
LOOPBACK = "127.0.0.1"


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive `sig` when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig)

    return preexec


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
