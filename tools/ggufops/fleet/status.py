"""What each host tells the fleet: a small JSON object in S3, `fleet/<env>/<host>.json`.

The sync agent publishes it after every change of its status (phase, commits, what the
server serves, the reason of a failure) and at least every heartbeat, from a thread of its
own so a slow or unreachable S3 never holds up an apply. A PUT replaces the object whole,
so a reader never sees half of one. The object keeps the host's last APPLIED_KEPT applied
commits with their times (seeded from the object already in S3 when the agent starts), for
`ggufops history --hosts`. `ggufops fleet status` reads every object of an environment.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ggufops.artifacts.s3config import S3Settings
from ggufops.artifacts.s3object import S3Objects
from ggufops.errors import GgufopsError, UsageError
from ggufops.httpjson import rfc3339
from ggufops.llama import loadcheck

log = logging.getLogger("ggufops.fleet")

SCHEMA = "ggufops.fleet-status/1"
APPLIED_KEPT = 50
DEFAULT_HEARTBEAT = 30.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_WATCH = 0.2  # seconds between looks at the agent's status (local, no network)


def status_key(settings: S3Settings, env: str, host: str) -> str:
    return settings.key(f"fleet/{env}/{host}.json")


def env_prefix(settings: S3Settings, env: str) -> str:
    return settings.key(f"fleet/{env}/")


def default_host_name() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


def check_host_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"--host-name {name!r}: use 1-63 letters, digits, '.', '_' or '-' "
                         "(it names the S3 object fleet/<env>/<host>.json)")
    return name


def parse_labels(text: str | None) -> dict[str, str]:
    """`zone=eu,wave=1` -> {"zone": "eu", "wave": "1"}; UsageError naming the bad pair."""
    labels: dict[str, str] = {}
    for pair in (p.strip() for p in (text or "").split(",")):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not _LABEL.match(key.strip()) or not _LABEL.match(value.strip()):
            raise UsageError(f"--labels: {pair!r} is not key=value (letters, digits, '.', "
                             "'_', '-', '/'); e.g. --labels zone=eu,wave=1")
        labels[key.strip()] = value.strip()
    return labels


@dataclass(frozen=True)
class Applied:
    commit: str
    at: str  # RFC 3339, the host's clock


@dataclass
class HostReport:
    """One host's published status (the JSON object, field for field)."""

    host: str
    environment: str
    labels: dict[str, str]
    phase: str
    reason: str | None
    applied_commit: str | None
    desired_commit: str | None
    serving: dict[str, dict[str, Any]]
    remote_error: str | None = None
    server_error: str | None = None
    llama_cpp_python: str | None = None
    heartbeat: float = DEFAULT_HEARTBEAT
    last_seen: str = ""
    applied: list[Applied] = field(default_factory=list)
    schema: str = SCHEMA

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def content(self) -> dict[str, Any]:
        """What changes mean something: everything but the time it was seen."""
        data = self.as_dict()
        data.pop("last_seen")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostReport:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["applied"] = [Applied(str(a.get("commit")), str(a.get("at")))
                            for a in data.get("applied") or [] if isinstance(a, dict)]
        return cls(**known)


def report_from_snapshot(snap: dict[str, Any], host: str, labels: dict[str, str],
                         heartbeat: float) -> HostReport:
    """The report of an agent's /status snapshot (applied history left to the caller)."""
    serving = {}
    for name, m in (snap.get("models") or {}).items():
        if m.get("serving_version") is None:
            continue
        entry: dict[str, Any] = {"version": m.get("serving_version"),
                                 "sha256": m.get("serving_sha256")}
        if m.get("serving_canary"):
            entry["canary"] = m["serving_canary"]
        serving[name] = entry
    return HostReport(
        host=host, environment=str(snap.get("environment")), labels=dict(labels),
        phase=str(snap.get("phase")), reason=snap.get("last_error"),
        applied_commit=snap.get("applied_commit"), desired_commit=snap.get("desired_commit"),
        serving=serving, remote_error=(snap.get("remote") or {}).get("error"),
        server_error=(snap.get("server") or {}).get("error"),
        llama_cpp_python=loadcheck.installed_version(), heartbeat=heartbeat)


def remember_applied(history: list[Applied], commit: str | None,
                     at: str | None) -> list[Applied]:
    """`history` with `commit` appended when it is new; the last APPLIED_KEPT kept."""
    if not commit or (history and history[-1].commit == commit):
        return history
    return [*history, Applied(commit, at or rfc3339(time.time()))][-APPLIED_KEPT:]


@dataclass(frozen=True)
class PublisherConfig:
    host: str
    environment: str
    labels: dict[str, str]
    heartbeat: float = DEFAULT_HEARTBEAT


class Publisher:
    """Publishes the agent's status to S3 from a thread: on every change, and every
    heartbeat. `settings()` says where (None until the agent has read a commit)."""

    def __init__(self, config: PublisherConfig, snapshot: Callable[[], dict[str, Any]],
                 settings: Callable[[], S3Settings | None]) -> None:
        self.config = config
        self._snapshot = snapshot
        self._settings = settings
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._applied: list[Applied] | None = None  # None: not yet read back from S3
        self._last_content: dict[str, Any] | None = None
        self._last_put = 0.0
        self._next_try = 0.0
        self.state: dict[str, Any] = {"host": config.host, "labels": config.labels,
                                      "key": None, "published_at": None, "error": None}

    def poke(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.wait(_WATCH)
            self._wake.clear()
            self.publish_if_due()

    def publish_if_due(self, *, phase: str | None = None, force: bool = False) -> bool:
        """Publish when the content changed or the heartbeat is due; True if it was put."""
        now = time.monotonic()
        if now < self._next_try and not force:
            return False
        snap = self._snapshot()
        report = self._report(snap, phase)
        if not force and report.content() == self._last_content and \
                now - self._last_put < self.config.heartbeat:
            return False
        return self._put(report, now, snap.get("last_success_at"))

    def _report(self, snap: dict[str, Any], phase: str | None) -> HostReport:
        c = self.config
        report = report_from_snapshot(snap, c.host, c.labels, c.heartbeat)
        if phase is not None:
            report.phase = phase
        return report

    def _put(self, report: HostReport, now: float, success_at: object) -> bool:
        settings = self._settings()
        if settings is None:
            return False
        key = status_key(settings, self.config.environment, self.config.host)
        try:
            objects = S3Objects(settings, timeout=5.0)
            report.applied = self._history(objects, key, report, success_at)
            report.last_seen = rfc3339(time.time())
            objects.put(key, json.dumps(report.as_dict(), indent=1).encode())
        except GgufopsError as e:
            self._failed(str(e), key, now)
            return False
        self._published(report, key, now)
        return True

    def _history(self, objects: S3Objects, key: str, report: HostReport,
                 success_at: object) -> list[Applied]:
        if self._applied is None:  # after a restart: go on with the list already in S3
            raw = objects.get(key)
            self._applied = _applied_of(raw)
        snap_at = str(success_at) if report.applied_commit and success_at else None
        self._applied = remember_applied(self._applied, report.applied_commit, snap_at)
        return list(self._applied)

    def _published(self, report: HostReport, key: str, now: float) -> None:
        if self.state.get("error"):
            log.info("fleet status published again to %s", key)
        self._last_content, self._last_put, self._next_try = report.content(), now, 0.0
        with self._lock:
            self.state.update(key=key, published_at=report.last_seen, error=None)

    def _failed(self, error: str, key: str, now: float) -> None:
        if not self.state.get("error"):
            log.warning("cannot publish the fleet status to %s: %s", key, error)
        self._next_try = now + min(5.0, self.config.heartbeat)
        with self._lock:
            self.state.update(key=key, error=error)

    def snapshot_state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.state)


def _applied_of(raw: bytes | None) -> list[Applied]:
    if raw is None:
        return []
    try:
        return HostReport.from_dict(json.loads(raw)).applied
    except (ValueError, TypeError, AttributeError):
        return []  # an unreadable old object: start a new list


def start(publisher: Publisher, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=publisher.run, args=(stop,), name="agent-fleet",
                              daemon=True)
    thread.start()
    return thread
