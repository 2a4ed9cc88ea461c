"""Process plumbing shared by every room: children that die with us, JSON children, free ports.

One `LineChild` for the long-lived children that answer a JSON line for each JSON line
(register's load check, the runtime gate's runtimes), and `answer_lines` for their side.

One `die_with_parent`: a child started with it gets a signal when its parent dies (Linux
prctl PR_SET_PDEATHSIG). SIGTERM by default, so SeaweedFS, DVC and the smoke test child shut
down cleanly; the agent's download child asks for SIGKILL (its SIGTERM means "cancelled";
an agent crash leaves the partial file to the next agent, as a power cut would).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


class LineChild:
    """A long-lived child that reads one JSON request per stdin line and writes one JSON
    reply per stdout line (its side: `answer_lines`). Its stderr goes to a file, whose
    last line says why it stopped. Not thread-safe: one request at a time."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.stderr: IO[str] = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
            "w+", encoding="utf-8", errors="replace")
        try:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                encoding="utf-8", errors="replace", env=None if env is None else dict(env),
                preexec_fn=preexec)  # noqa: PLW1509 - callers pass prctl/setrlimit only
        except BaseException:
            self.stderr.close()
            raise

    def running(self) -> bool:
        return self.proc.poll() is None

    def send(self, request: object) -> None:
        """Write one request line; BrokenPipeError (an OSError) when the child has gone."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float | None = None) -> Any | None:
        """The next reply, parsed; None when the child ended without one. TimeoutError when
        none came within `timeout` seconds (the child is left running: kill() or close())."""
        assert self.proc.stdout is not None
        if timeout is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError(f"no answer in {timeout:.0f} s")
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status once it has ended (after receive() said None: its stdout closes
        a moment before its exit status is there, so poll() could still say running);
        killed if it has not ended within `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """End the child now; its exit status (negative: the signal)."""
        if self.running():
            self.proc.kill()
        return self.proc.wait()

    def last_error_line(self) -> str:
        """The last line the child wrote to stderr ("" when none)."""
        self.stderr.seek(0)
        lines = self.stderr.read().strip().splitlines()
        return lines[-1] if lines else ""

    def close(self, grace: float = 0.0) -> None:
        """Close its stdin (it ends at EOF), give it `grace` seconds, then kill it; free
        its pipes and stderr file. Safe to call twice."""
        for stream in (self.proc.stdin, self.proc.stdout):
            # a dead child leaves what we wrote unflushed: closing then raises
            # BrokenPipeError, which says nothing new
            with contextlib.suppress(BrokenPipeError):
                if stream is not None and not stream.closed:
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self.kill()
        self.stderr.close()


def answer_lines(respond: Callable[[str], object]) -> None:
    """The child side of LineChild: one JSON reply to each non-empty stdin line until stdin
    ends. Replies go to the real stdout; anything else printed there (a C library's logs,
    a stray print) is sent to stderr so that it cannot break a reply line."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if line.strip():
            replies.write(json.dumps(respond(line)) + "\n")
            replies.flush()
