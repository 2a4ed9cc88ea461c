"""Process plumbing shared by every room: children that die with us, JSON children, free ports.

One `die_with_parent`: a child started with it gets a signal when its parent dies (Linux
prctl PR_SET_PDEATHSIG). SIGTERM by default, so SeaweedFS, DVC and the smoke test child shut
down cleanly; the agent's download child asks for SIGKILL (its SIGTERM means "cancelled";
an agent crash leaves the partial file to the next agent, as a power cut would).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class ChildResult:
    """What a finished Python child left: its exit status and its two streams (text)."""

    returncode: int
    stdout: str
    stderr: str

    def last_json(self) -> Any | None:
        """The child's answer: its last stdout line parsed as JSON (None if it is not JSON)."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            return None
        with contextlib.suppress(ValueError):
            return json.loads(lines[-1])
        return None

    def last_error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def run_python(args: Sequence[str], *, request: object = None, timeout: float | None = None,
               cwd: Path | None = None, env: Mapping[str, str] | None = None,
               python: str | None = None) -> ChildResult:
    """Run `python ARGS` in a child that dies with us; `request`, if given, is sent to its
    stdin as JSON. Raises subprocess.TimeoutExpired when `timeout` passes (the child is
    killed). `python`: another interpreter than ours (the runtime gate's runtimes)."""
    stdin = None if request is None else json.dumps(request)
    proc = subprocess.run(
        [python or sys.executable, *args], input=stdin, capture_output=True, encoding="utf-8",
        errors="replace",
        timeout=timeout, cwd=cwd, env=None if env is None else dict(env), check=False,
        preexec_fn=die_with_parent(),
    )
    return ChildResult(proc.returncode, proc.stdout, proc.stderr)
