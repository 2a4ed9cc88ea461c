"""The agent's SQLite apply log: attempts, outcomes, state and artifacts survive restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufops.agent.applylog import ApplyLog
from ggufops.errors import ApplyLogError


def test_attempts_are_recorded_with_their_outcome(tmp_path: Path) -> None:
    log = ApplyLog(tmp_path / "log.sqlite")
    first = log.start("a" * 40, "production", {})
    log.update(first, phase="downloading", models={"m": {"version": "1.0.0"}})
    log.finish(first, "failed", "downloading", "S3 unreachable")
    second = log.start("b" * 40, "production", {"m": {"version": "1.1.0"}})
    log.finish(second, "success", "healthy")
    recent = log.recent()
    assert [(a.id, a.outcome, a.phase, a.error) for a in recent] == [
        (second, "success", "healthy", None),
        (first, "failed", "downloading", "S3 unreachable"),
    ]
    assert recent[1].models == {"m": {"version": "1.0.0"}}
    assert recent[0].finished_at is not None and recent[0].finished_at >= recent[0].started_at
    last = log.last("success")
    assert last is not None and last.commit == "b" * 40
    assert log.count() == 2 and log.count("failed") == 1
    with pytest.raises(ValueError, match="outcome"):
        log.finish(second, "running", "healthy")


def test_an_attempt_cut_short_is_marked_interrupted_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = ApplyLog(path)
    attempt = log.start("c" * 40, "production", {})
    log.update(attempt, phase="downloading")
    # no finish: the process died here (the connection is simply dropped)
    reopened = ApplyLog(path)
    [row] = reopened.recent()
    assert (row.outcome, row.phase) == ("interrupted", "downloading")
    assert row.finished_at is not None
    log.close()
    reopened.close()


def test_state_and_artifacts_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = ApplyLog(path)
    log.save_state("status", {"phase": "healthy", "applied_commit": "d" * 40})
    log.save_state("status", {"phase": "degraded", "applied_commit": "d" * 40})
    log.touch_artifact("m", "1.0.0", "1" * 64, when=100.0)
    log.touch_artifact("m", "1.1.0", "2" * 64, when=200.0)
    log.touch_artifact("m", "1.0.0", "1" * 64, when=300.0)  # rolled back to 1.0.0
    log.touch_artifact("other", "0.1.0", "3" * 64, when=50.0)
    log.close()
    again = ApplyLog(path)
    assert again.load_state("status") == {"phase": "degraded", "applied_commit": "d" * 40}
    assert again.load_state("missing") is None
    assert [(a.version, a.last_used) for a in again.artifacts("m")] == [("1.0.0", 300.0),
                                                                        ("1.1.0", 200.0)]
    again.forget_artifact("m", "2" * 64)
    assert [a.model for a in again.artifacts()] == ["m", "other"]


def test_readonly_access_for_status(tmp_path: Path) -> None:
    with pytest.raises(ApplyLogError, match="no apply log"):
        ApplyLog(tmp_path / "none.sqlite", readonly=True)
    writer = ApplyLog(tmp_path / "log.sqlite")
    writer.finish(writer.start("e" * 40, "staging", {}), "refused", "syncing", "invalid")
    reader = ApplyLog(tmp_path / "log.sqlite", readonly=True)
    assert [a.outcome for a in reader.recent()] == ["refused"]
    reader.close()
    writer.close()


def test_an_unusable_path_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ApplyLogError, match="cannot open the apply log"):
        ApplyLog(blocker / "log.sqlite")


def test_the_log_is_private_and_stores_no_url_credentials(tmp_path: Path) -> None:
    path = tmp_path / "state" / "log.sqlite"
    log = ApplyLog(path)
    attempt = log.start("d" * 40, "production", {})
    log.update(attempt, commit="e" * 40)  # a newer commit with the same state took it over
    log.finish(attempt, "superseded", "downloading",
               "fetching http://bot:PLANTED@git.example/r.git failed")
    log.save_state("status", {"remote": {"url": "http://bot:PLANTED@git.example/r.git"}})
    assert log.recent()[0].commit == "e" * 40
    assert log.recent()[0].error == "fetching http://bot:***@git.example/r.git failed"
    assert log.load_state("status") == {"remote": {"url": "http://bot:***@git.example/r.git"}}
    log.close()
    files = sorted(path.parent.iterdir())
    assert path in files
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert not any(b"PLANTED" in f.read_bytes() for f in files)


def test_an_older_world_readable_log_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    ApplyLog(path).close()
    path.chmod(0o644)
    ApplyLog(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
