"""When a canary step is due: the time its weight was set, read from git, the same on every
host whatever commit it applied (a real repository with a bare remote); and where its
progress deadline counts from: when this host began serving the step, kept while the step
stays, and after a restart read back from the apply log (a real SQLite apply log)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from ggufops import git as gitcalls
from ggufops import notify
from ggufops.agent import applylog, canaryverdict, loop
from ggufops.agent.applylog import ApplyLog
from ggufops.agent.canaryverdict import Verdict
from ggufops.agent.canarywatch import Analysed, CanaryWatch, step_time
from ggufops.agent.loop import canary_arrivals
from ggufops.agent.triggerwatch import PushSettings
from ggufops.registry.records import Canary, CanaryAnalysis
from testing.repos import git, git_commit
from testing.scratch import MODEL, OTHER, Scratch, cli, ship

PLAN = CanaryAnalysis((10, 25, 50, 100), 60.0)


def test_the_step_time_is_the_commit_that_set_the_weight(scratch: Scratch) -> None:
    s = scratch
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0", "staging")
    env = {"GIT_COMMITTER_DATE": "2026-11-30T10:00:00+00:00"}
    result = cli(s.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary", "10",
                 "--steps", "10,25,50,100", "--direct")
    assert result.exit_code == 0, result.output + result.stderr
    subprocess.run(["git", "commit", "-q", "--amend", "--no-edit"], cwd=s.root, check=True,
                   env={**os.environ, **env})  # a known committer time
    step = git(s.root, "rev-parse", "HEAD")
    ship(s.root, f"{OTHER}@1.0.0")  # an unrelated change of production lands later
    later = git(s.root, "rev-parse", "HEAD")
    canary = Canary("2.0.0", 10, PLAN)
    expected = gitcalls.commit_time(s.root, step)
    assert expected == 1796032800  # 2026-11-30T10:00:00Z
    assert step_time(s.root, "production", later, MODEL, canary) == expected
    assert step_time(s.root, "production", step, MODEL, canary) == expected
    # a weight no change set: the applied commit's own time
    assert step_time(s.root, "production", later, MODEL, Canary("2.0.0", 25, PLAN)) == \
        gitcalls.commit_time(s.root, later)


def test_an_agent_that_trusts_but_cannot_sign_pushes_no_decision_and_says_why(
        tmp_path: Path) -> None:
    """With --trust and no --signing-key, a step/promote/abort commit would be unsigned and
    refused by every trusting host: nothing is pushed, the event says what to do, once."""
    push = PushSettings(str(tmp_path / "remote.git"), "main", "host-a", tmp_path / "revert.git",
                        unsigned_refused=True)
    notes: list[dict[str, Any]] = []
    watch = CanaryWatch("production", "http://127.0.0.1:9", None, push, notify=notes.append)
    item = Analysed(MODEL, "1.0.0", Canary("2.0.0", 10, PLAN), "c0ffee", 1796032800.0)
    verdict = Verdict(canaryverdict.GOOD, None, 40, 200, 0.0, 0.0, None, 0.1, 0.1, 1.0, None,
                      None, None, None, 60.0, "passed")
    assert watch._decide(item, verdict, 1796032900.0) is False
    assert item.decided  # not judged again: a person must act
    (event,) = watch.events
    assert event["outcome"] == "push failed" and event["kind"] == "canary-step"
    assert notes == [event]  # sent to the webhook too
    assert notify.slack_text(event) == (
        f"ggufops canary analysis canary-step: {MODEL} canary 2.0.0 at 10% -> 25% on host-a: "
        "passed - push failed")
    assert "runs with --trust but no --signing-key" in event["error"]
    assert not (tmp_path / "revert.git").exists()  # no clone made, nothing pushed


def test_a_segment_host_compares_the_canary_with_the_version_it_serves(
        scratch: Scratch) -> None:
    """Hosts in a `segments:` entry serve their segment's version as the primary: that is
    what their canary is compared with (the commit still names the entry's version)."""
    s = scratch
    for ref in (f"{MODEL}@1.0.0", f"{MODEL}@2.0.0"):
        ship(s.root, ref)
    ship(s.root, f"{MODEL}@2.1.0", "staging")
    path = s.root / "environments" / "production.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["models"][MODEL].update(
        segments=[{"selector": {"zone": "eu"}, "version": "1.0.0"}],
        canary={"version": "2.1.0", "weight": 10, "analysis": {"steps": [10, 100],
                                                               "interval": 1}})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    commit = gitcalls.commit_files(s.root, git(s.root, "rev-parse", "HEAD"), {
        "environments/production.yaml": path.read_bytes()}, "deploy(production): canary")
    push = PushSettings(str(s.remote), "main", "host-eu", s.tmp / "revert.git")
    watch = CanaryWatch("production", "http://127.0.0.1:9", None, push, labels={"zone": "eu"})
    watch.applied(s.root, s.root, commit)
    item = watch.analysed[MODEL]
    assert (item.primary, item.judged()) == ("2.0.0", "1.0.0")
    rows = [{"ts": item.started + 1, "version": v, "role": role, "ok": True, "latency_s": 0.1}
            for v, role in (("1.0.0", "primary"), ("2.1.0", "canary")) for _ in range(30)]
    watch._window = lambda model, since: {"requests": rows}  # type: ignore[method-assign]
    watch._decide = lambda item, verdict, now: True  # type: ignore[method-assign]
    watch.check(now=item.due())
    assert item.last is not None and item.last.primary_requests == 30
    assert watch.report()["analysing"][MODEL]["compared_with"] == "1.0.0"
    other = CanaryWatch("production", "http://127.0.0.1:9", None, push)
    other.applied(s.root, s.root, commit)
    assert other.analysed[MODEL].judged() == "2.0.0"  # a host outside the segment


# --- where a progress deadline counts from --------------------------------------------

CHAT = "chat"
PLAN_DOC = {"steps": [10, 25, 50, 100], "interval": 60}


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "environments").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    return repo


def _set(repo: Path, weight: int, version: str = "2.1.0") -> str:
    entry = {"version": "2.0.0", "canary": {"version": version, "weight": weight,
                                            "analysis": PLAN_DOC}}
    (repo / "environments" / "production.yaml").write_text(yaml.safe_dump(
        {"environment": "production", "models": {CHAT: entry}}, sort_keys=False))
    return git_commit(repo, f"canary {version} {weight}%")


def _watch(tmp_path: Path) -> CanaryWatch:
    push = PushSettings(str(tmp_path / "remote.git"), "main", "host-a", tmp_path / "clone.git")
    return CanaryWatch("production", "http://127.0.0.1:9", None, push)


def test_a_step_keeps_when_it_was_first_served_until_the_step_changes(tmp_path: Path) -> None:
    repo, watch = _repo(tmp_path), _watch(tmp_path)
    late = time.time() + 10_000  # this host began serving the step long after it was due
    watch.applied(repo, repo, _set(repo, 10), seen={CHAT: late})
    first = watch.analysed[CHAT]
    assert first.seen == late and first.waiting_since() == late
    (repo / "unrelated.txt").write_text("x")
    watch.applied(repo, repo, git_commit(repo, "an unrelated change"))  # the same step
    assert watch.analysed[CHAT] is first and first.seen == late
    before = time.time()
    watch.applied(repo, repo, _set(repo, 25))  # a new step, served from now, due in 60 s
    step = watch.analysed[CHAT]
    assert step is not first and before <= step.seen < step.due()
    assert step.waiting_since() == step.due() == step.started + 60
    step.window_from = step.due() + 30  # its server restarted after the step was due
    assert step.waiting_since() == step.due() + 30
    watch.policy = watch.policy.__class__(progress_deadline=600)
    shown = watch.report()["analysing"][CHAT]
    assert shown["deadline"] is not None and shown["deadline"] > shown["due"]


def test_after_a_restart_a_step_counts_from_the_apply_that_first_served_it(
        tmp_path: Path) -> None:
    log = ApplyLog(tmp_path / "applies.db")

    def applied(commit: str, weight: int | None, version: str = "2.1.0",
                outcome: str = "success") -> float:
        models: dict[str, dict[str, Any]] = {CHAT: {"version": "2.0.0"},
                                             "embed": {"version": "1.0.0"}}
        if weight is not None:
            models[CHAT]["canary"] = {"version": version, "weight": weight}
        attempt = log.start(commit, "production", models)
        log.finish(attempt, outcome, "healthy" if outcome == "success" else "loading")
        return log.recent(1)[0].finished_at or 0.0

    applied("c1", None)
    applied("c2", 10)
    stepped = applied("c3", 25)
    applied("c4", 50, outcome="failed")  # a failed apply served nothing new
    applied("c5", 25)  # e.g. a policy change: the step stays
    successes = [a for a in log.recent(50) if a.outcome == "success"]
    assert canary_arrivals(successes) == {CHAT: stepped}  # no canary, no entry: embed
    applied("c6", 25, version="2.2.0")  # another canary at the same weight is a new step
    successes = [a for a in log.recent(50) if a.outcome == "success"]
    assert canary_arrivals(successes) == {CHAT: successes[0].finished_at}
    assert canary_arrivals([]) == {}


def test_a_restarted_agent_resumes_the_step_with_the_clock_of_its_first_apply(
        tmp_path: Path) -> None:
    """Agent.recover on a real mirror and apply log: the canary step is analysed again, and
    its `seen` is when this host first served it (the apply log), not the restart."""
    repo = _repo(tmp_path)
    _set(repo, 10)
    step = _set(repo, 25)
    (repo / "unrelated.txt").write_text("x")
    later = git_commit(repo, "an unrelated change")
    state = tmp_path / "state"
    state.mkdir()
    git(tmp_path, "clone", "-q", "--mirror", str(repo), str(state / "mirror.git"))
    log = ApplyLog(state / applylog.FILE_NAME)
    times = []
    for commit, weight in ((step, 10), (step, 25), (later, 25)):
        models = {CHAT: {"version": "2.0.0", "canary": {"version": "2.1.0", "weight": weight}}}
        attempt = log.start(commit, "production", models)
        log.finish(attempt, "success", "healthy")
        times.append(log.recent(1)[0].finished_at)
    log.close()
    config = loop.AgentConfig(repo_url=str(repo), env="production", store=tmp_path / "store",
                              server_url="http://127.0.0.1:9", state_dir=state, status_port=None)
    agent = loop.Agent(config)
    agent.recover()
    resumed = agent.canaries.analysed[CHAT]
    assert (resumed.commit, resumed.canary.weight) == (later, 25)
    assert resumed.seen == times[1]  # the first apply that served 25%, not now
