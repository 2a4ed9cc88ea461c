"""The sync agent's apply log: every apply attempt and its outcome, in SQLite.

It lives in the agent's state directory and survives restarts. Three tables:
  applies    one row per attempt: commit, environment, desired models, outcome
             (running | success | failed | refused | interrupted), phase reached, error
  state      the agent's last status snapshot (for `ggufops agent status` while it is down)
  artifacts  which model versions the local store holds and when each last served
             (the retention policy keeps the last N per model)
An attempt still `running` when the log is opened by a new agent process was cut short
(SIGKILL, power loss): it is marked `interrupted`. An attempt `superseded` stopped because
a newer commit changed the desired state.

The database (and SQLite's -wal and -shm files beside it, which take its mode) is 0600 in
a 0700 directory, and what is written to it goes through ggufops.redact: errors and the
status snapshot may name the git URL, never its credentials.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ggufops.errors import ApplyLogError
from ggufops.redact import redact, redact_data

FILE_NAME = "applylog.sqlite"
OUTCOMES = ("running", "success", "failed", "refused", "interrupted", "superseded")
FILE_MODE = 0o600
DIR_MODE = 0o700

_SCHEMA = """
CREATE TABLE IF NOT EXISTS applies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    commit_sha TEXT NOT NULL,
    environment TEXT NOT NULL,
    outcome TEXT NOT NULL,
    phase TEXT NOT NULL,
    error TEXT,
    models TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (
    model TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    version TEXT NOT NULL,
    last_used REAL NOT NULL,
    PRIMARY KEY (model, sha256)
);
"""


@dataclass(frozen=True)
class Attempt:
    id: int
    started_at: float
    finished_at: float | None
    commit: str
    environment: str
    outcome: str
    phase: str
    error: str | None
    models: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoredArtifact:
    model: str
    sha256: str
    version: str
    last_used: float


def _attempt(row: tuple[Any, ...]) -> Attempt:
    return Attempt(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                   json.loads(row[8]))


class ApplyLog:
    """One SQLite database; safe to share between the agent's threads."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = self._connect(path, readonly)
        if not readonly:
            self._init()

    @staticmethod
    def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
        try:
            if readonly:
                if not path.is_file():
                    raise ApplyLogError(f"no apply log at {path}; pass the agent's --state-dir")
                return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            _private_file(path)
            return sqlite3.connect(path, check_same_thread=False, timeout=10.0)
        except (sqlite3.Error, OSError) as e:
            raise ApplyLogError(f"cannot open the apply log {path}: {e}; check the state "
                                "directory's permissions") from None

    def _init(self) -> None:
        with self._write() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute("UPDATE applies SET outcome = 'interrupted', finished_at = ? "
                       "WHERE outcome = 'running'", (time.time(),))

    def _write(self) -> _Transaction:
        return _Transaction(self)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise ApplyLogError(f"reading the apply log {self.path} failed: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # attempts

    def start(self, commit: str, environment: str, models: dict[str, Any],
              phase: str = "syncing") -> int:
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO applies (started_at, commit_sha, environment, outcome, phase, "
                "models) VALUES (?, ?, ?, 'running', ?, ?)",
                (time.time(), commit, environment, phase, json.dumps(models, sort_keys=True)))
            return int(cur.lastrowid or 0)

    def update(self, attempt_id: int, *, phase: str | None = None,
               models: dict[str, Any] | None = None, commit: str | None = None) -> None:
        with self._write() as db:
            if commit is not None:
                db.execute("UPDATE applies SET commit_sha = ? WHERE id = ?", (commit, attempt_id))
            if phase is not None:
                db.execute("UPDATE applies SET phase = ? WHERE id = ?", (phase, attempt_id))
            if models is not None:
                db.execute("UPDATE applies SET models = ? WHERE id = ?",
                           (json.dumps(models, sort_keys=True), attempt_id))

    def finish(self, attempt_id: int, outcome: str, phase: str,
               error: str | None = None) -> float:
        """Record how the attempt ended; the time recorded as its end."""
        if outcome not in OUTCOMES[1:]:
            raise ValueError(f"outcome {outcome!r} is not one of {OUTCOMES[1:]}")
        now = time.time()
        with self._write() as db:
            db.execute("UPDATE applies SET outcome = ?, phase = ?, error = ?, finished_at = ? "
                       "WHERE id = ?", (outcome, phase, redact(error) if error else error,
                                        now, attempt_id))
        return now

    def recent(self, limit: int = 20) -> list[Attempt]:
        rows = self._query("SELECT id, started_at, finished_at, commit_sha, environment, "
                           "outcome, phase, error, models FROM applies ORDER BY id DESC "
                           "LIMIT ?", (limit,))
        return [_attempt(r) for r in rows]

    def last(self, outcome: str) -> Attempt | None:
        rows = self._query("SELECT id, started_at, finished_at, commit_sha, environment, "
                           "outcome, phase, error, models FROM applies WHERE outcome = ? "
                           "ORDER BY id DESC LIMIT 1", (outcome,))
        return _attempt(rows[0]) if rows else None

    def count(self, outcome: str | None = None) -> int:
        if outcome is None:
            return int(self._query("SELECT COUNT(*) FROM applies")[0][0])
        return int(self._query("SELECT COUNT(*) FROM applies WHERE outcome = ?",
                               (outcome,))[0][0])

    # status snapshot

    def save_state(self, key: str, value: Any) -> None:
        with self._write() as db:
            db.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) "
                       "DO UPDATE SET value = excluded.value",
                       (key, json.dumps(redact_data(value))))

    def load_state(self, key: str) -> Any:
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    # artifacts in the local store

    def touch_artifact(self, model: str, version: str, sha256: str,
                       when: float | None = None) -> None:
        with self._write() as db:
            db.execute("INSERT INTO artifacts (model, sha256, version, last_used) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT(model, sha256) DO UPDATE SET "
                       "version = excluded.version, last_used = excluded.last_used",
                       (model, sha256, version, when if when is not None else time.time()))

    def artifacts(self, model: str | None = None) -> list[StoredArtifact]:
        """Artifacts recorded for `model` (or all), most recently used first."""
        sql = "SELECT model, sha256, version, last_used FROM artifacts"
        args: tuple[Any, ...] = ()
        if model is not None:
            sql += " WHERE model = ?"
            args = (model,)
        rows = self._query(sql + " ORDER BY last_used DESC", args)
        return [StoredArtifact(*r) for r in rows]

    def forget_artifact(self, model: str, sha256: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM artifacts WHERE model = ? AND sha256 = ?", (model, sha256))


def _private_file(path: Path) -> None:
    """Create `path` (and its directory) readable by the owner only; tighten an older one."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    for existing in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
        if existing.exists() and existing.stat().st_mode & 0o077:
            existing.chmod(FILE_MODE)


class _Transaction:
    """`with log._write() as db:` one locked transaction, errors as ApplyLogError."""

    def __init__(self, log: ApplyLog) -> None:
        self.log = log

    def __enter__(self) -> sqlite3.Connection:
        self.log._lock.acquire()
        return self.log._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.log._db.commit()
            else:
                self.log._db.rollback()
        finally:
            self.log._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise ApplyLogError(f"writing the apply log {self.log.path} failed: {exc}; "
                                "check disk space and permissions") from None
