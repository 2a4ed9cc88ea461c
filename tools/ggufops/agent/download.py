"""The sync agent's downloads: a child process per batch, cancellable, with a deadline.

boto3 and its S3 client add ~25 MB that an idle agent would keep for good; a child process
returns that memory after each batch, and it can be stopped at any moment: when a newer
commit no longer needs what it fetches, when the batch's deadline passes, or when the agent
stops. The child reports each verified artifact as a JSON line on stdout
(`{"done": sha256}`) or its error (`{"error": class name, "message": ...}`); a reader thread
turns those lines into events and wakes the agent's loop, which never blocks on the child.

Cancelling sends SIGTERM: the child raises SystemExit inside the transfer, whose cleanup
removes its temp file, so only verified files are ever left in the store. A child that does
not exit within a few seconds gets SIGKILL, and the agent removes its temp files. The child
also dies with the agent, by SIGKILL (PR_SET_PDEATHSIG): an agent that died leaves its
partial file behind like a power cut would, and the next agent removes it (tested).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ggufops import errors
from ggufops.agent.plan import Target
from ggufops.artifacts import s3config
from ggufops.artifacts.dvc import S3Remote
from ggufops.artifacts.pull import pull_object
from ggufops.errors import AgentError, GgufopsError
from ggufops.procs import die_with_parent

_SCRIPT = "from ggufops.agent.download import download_main; raise SystemExit(download_main())"
TERM_GRACE = 5.0  # seconds a cancelled child has to clean up before SIGKILL
_EOF = object()


class Download:
    """One batch of artifacts pulled into the store by a child process."""

    def __init__(self, store: Path, tree: Path, targets: list[Target], s3_endpoint: str | None,
                 *, timeout: float, wake: threading.Event) -> None:
        self.pending = list(targets)  # not yet reported stored
        self.deadline = time.monotonic() + timeout
        self.error: GgufopsError | None = None
        self._wake = wake
        self._events: queue.Queue[object] = queue.Queue()
        self._eof = False
        request = {"store": str(store), "tree": str(tree), "s3_endpoint": s3_endpoint,
                   "targets": [dataclasses.asdict(t) for t in targets]}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            preexec_fn=die_with_parent(signal.SIGKILL))  # noqa: PLW1509 - prctl only
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request).encode())
        self._proc.stdin.close()
        self._reader = threading.Thread(target=self._read, name="agent-download-reader",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                continue
            self._wake.set()
        self._events.put(_EOF)
        self._wake.set()

    # the agent's side

    def take_done(self) -> list[Target]:
        """Targets stored since the last call (verified); records the child's error."""
        done: list[Target] = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return done
            if event is _EOF:
                self._eof = True
            elif isinstance(event, dict) and "done" in event:
                done += [t for t in self.pending if t.sha256 == event["done"]]
                self.pending = [t for t in self.pending if t.sha256 != event["done"]]
            elif isinstance(event, dict):
                self.error = _error_from(event)

    @property
    def finished(self) -> bool:
        """The child closed its output (it is exiting or gone)."""
        return self._eof

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - time.monotonic()

    def result(self) -> None:
        """After `finished` (every event taken): raise the child's error, if it failed."""
        code = self._proc.wait()
        if self.error is not None:
            raise self.error
        if code != 0 or self.pending:
            raise AgentError(f"the download process exited with status {code}; see the "
                             "agent's log")

    def cancel(self) -> bool:
        """Stop the child (SIGTERM, SIGKILL after TERM_GRACE s); True if it had to be killed,
        which may leave a temp file for the caller to remove."""
        killed = False
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(TERM_GRACE)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                killed = True
        self._reader.join(TERM_GRACE)  # its last lines: files stored before the cancel
        return killed

    def describe(self) -> str:
        names = ", ".join(f"{t.display_id} ({t.size:,} bytes)" for t in self.pending)
        return names or "nothing"


def _error_from(event: dict[str, Any]) -> GgufopsError:

    cls = getattr(errors, str(event.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, GgufopsError)):
        cls = AgentError
    return cls(str(event.get("message")))


# --- the child -------------------------------------------------------------------------------


class _Cancelled(BaseException):
    """SIGTERM: the agent no longer wants this download."""


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise _Cancelled  # unwinds the transfer: its temp file is removed


def download_main() -> int:
    """The child: pull each target, report JSON lines; on SIGTERM, remove the temp file
    (by unwinding) and exit at once, without the interpreter's slow teardown of boto3."""
    signal.signal(signal.SIGTERM, _stop)
    try:
        return _download_all()
    except _Cancelled:
        sys.stdout.flush()
        os._exit(128 + signal.SIGTERM)


def _download_all() -> int:

    request = json.load(sys.stdin)
    try:
        settings = s3config.resolve(Path(request["tree"]))
        if request["s3_endpoint"]:
            settings = dataclasses.replace(settings, endpoint_url=request["s3_endpoint"])
        remote = S3Remote(settings)
        for t in request["targets"]:
            pull_object(Path(request["store"]), sha256=t["sha256"], dvc_md5=t["dvc_md5"],
                        remote=remote, size=t["size"], label=t["display_id"], progress=False)
            print(json.dumps({"done": t["sha256"]}), flush=True)
    except GgufopsError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
        return 1
    return 0

