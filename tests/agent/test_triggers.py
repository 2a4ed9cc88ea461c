"""Rollback triggers judged on recorded request windows (the rules themselves), and the
revert they push: real git, a bare remote, several hosts racing for it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from ggufops.agent import triggers
from ggufops.agent.applylog import ApplyLog
from ggufops.agent.loop import arrivals, watched_live
from ggufops.agent.triggers import TriggerPolicy
from ggufops.agent.triggerwatch import PushSettings, TriggerWatch, Watched
from ggufops.errors import InvalidDesiredState
from ggufops.gitops import triggerrevert
from testing.repos import (
    git,
    git_commit,
    make_registry,
    make_remote,
    set_environment,
    write_version,
)

MODEL = "llama3-instruct"
NOW = 10_000.0


def _req(ts: float, version: str, latency: float = 0.1, *, ok: bool = True,
         tokens: int = 8, role: str = "primary") -> dict[str, Any]:
    return {"ts": ts, "model": MODEL, "version": version, "role": role, "latency_s": latency,
            "ok": ok, "status": 200 if ok else 500, "prompt_tokens": 4,
            "completion_tokens": tokens, "completion_id": f"c-{ts}"}


def _window(requests: list[dict[str, Any]], ratings: tuple[int, ...] = ()) -> dict[str, Any]:
    rows = [{"ts": NOW - 1, "model": MODEL, "version": "2.1.0", "completion_id": f"r{i}",
             "rating": r} for i, r in enumerate(ratings)]
    return {"requests": requests, "ratings": rows}


def _judge(policy: TriggerPolicy, window: dict[str, Any]) -> list[triggers.Firing]:
    judged = triggers.select(window, MODEL, "2.1.0", previous="2.0.0", since=NOW - 100,
                             now=NOW, window_s=policy.window_s)
    return triggers.evaluate(policy, judged)


def _baseline(n: int = 20, latency: float = 0.1) -> list[dict[str, Any]]:
    return [_req(NOW - 200 + i, "2.0.0", latency) for i in range(n)]


def test_error_rate_fires_above_the_threshold_only() -> None:
    policy = TriggerPolicy(window_s=60, min_requests=20, error_rate=0.05)
    new = [_req(NOW - 50 + i, "2.1.0", ok=i % 10 != 0) for i in range(20)]  # 10% fail
    (fired,) = _judge(policy, _window(_baseline() + new))
    assert (fired.metric, fired.value, fired.action, fired.requests) == \
        ("error_rate", 0.1, "rollback", 20)
    one_in_twenty = [_req(NOW - 50 + i, "2.1.0", ok=i != 3) for i in range(20)]  # 5%: not above
    assert _judge(policy, _window(_baseline() + one_in_twenty)) == []


def test_nothing_is_judged_before_min_requests() -> None:
    policy = TriggerPolicy(window_s=60, min_requests=20, error_rate=0.05)
    failing = [_req(NOW - 50 + i, "2.1.0", ok=False) for i in range(19)]
    assert _judge(policy, _window(failing)) == []


def test_records_before_the_apply_or_outside_the_window_do_not_count() -> None:
    policy = TriggerPolicy(window_s=30, min_requests=5, error_rate=0.05)
    old_failures = [_req(NOW - 40 + i, "2.1.0", ok=False) for i in range(5)]  # > 30 s ago
    canary_failures = [_req(NOW - 5 + i, "2.1.0", ok=False, role="canary") for i in range(5)]
    fine = [_req(NOW - 20 + i, "2.1.0") for i in range(5)]
    assert _judge(policy, _window(old_failures + canary_failures + fine)) == []


def test_p95_ratio_compares_with_the_previous_version_on_this_host() -> None:
    policy = TriggerPolicy(window_s=60, min_requests=20, p95_ratio=1.5)
    slow = [_req(NOW - 50 + i, "2.1.0", 0.2) for i in range(20)]
    (fired,) = _judge(policy, _window(_baseline(latency=0.1) + slow))
    assert (fired.metric, round(fired.value, 6)) == ("p95_ratio", 2.0)
    a_bit_slower = [_req(NOW - 50 + i, "2.1.0", 0.14) for i in range(20)]
    assert _judge(policy, _window(_baseline(latency=0.1) + a_bit_slower)) == []
    assert _judge(policy, _window(_baseline(n=19) + slow)) == []  # too little to compare


def test_low_ratings_fire_once_there_are_enough() -> None:
    policy = TriggerPolicy(window_s=60, min_requests=5, min_rating=3.5, min_ratings=4)
    new = [_req(NOW - 50 + i, "2.1.0") for i in range(5)]
    (fired,) = _judge(policy, _window(new, (1, 2, 4, 5)))
    assert (fired.metric, fired.value) == ("rating", 3.0)
    assert _judge(policy, _window(new, (1, 1, 1))) == []  # 3 ratings < min_ratings
    assert _judge(policy, _window(new, (3, 4, 4, 4))) == []  # 3.75 >= 3.5


def test_tokens_ratio_is_an_alert_not_a_rollback() -> None:
    policy = TriggerPolicy(window_s=60, min_requests=20, tokens_ratio=1.5)
    verbose = [_req(NOW - 50 + i, "2.1.0", tokens=16) for i in range(20)]
    firings = _judge(policy, _window(_baseline() + verbose))
    assert [(f.metric, f.value, f.action) for f in firings] == [("tokens_ratio", 2.0, "alert")]
    assert triggers.first_rollback(firings) is None


def test_policy_per_environment() -> None:
    policy = {"rollback_triggers": {"production": {"window_s": 120, "error_rate": 0.05,
                                                   "p95_ratio": None}}}
    assert TriggerPolicy.of_environment(policy, "production") == \
        TriggerPolicy(window_s=120, error_rate=0.05)
    assert TriggerPolicy.of_environment(policy, "staging") is None
    with pytest.raises(InvalidDesiredState, match=r"rollback_triggers\.production"):
        TriggerPolicy.of_environment({"rollback_triggers": {"production": {"p99": 2}}},
                                     "production")
    # read without the schema: a wrong type is refused here, not met on every tick
    for key, bad, what in (("error_rate", "5%", "a number"), ("min_requests", 1.5,
                                                               "a whole number"),
                           ("window_s", 0, "a number above 0"), ("p95_ratio", True, "a number")):
        with pytest.raises(InvalidDesiredState, match=rf"rollback_triggers\.production\.{key} "
                           rf"must be {what}; got {bad!r}"):
            TriggerPolicy.of_environment({"rollback_triggers": {"production": {key: bad}}},
                                         "production")


def test_trailer_names_metric_value_threshold_window_and_host() -> None:
    firing = triggers.Firing("p95_ratio", 2.04321, 1.5, 60, "rollback", MODEL, "2.1.0", 30)
    assert firing.trailer("host-a") == \
        "metric=p95_ratio value=2.043 threshold=1.5 window=60s host=host-a"


# --- the revert, on real git -------------------------------------------------------------------


@pytest.fixture
def deployed(tmp_path: Path) -> tuple[Path, Path, str]:
    """A registry pushed to a bare remote: production ran 2.0.0, then deploy 2.1.0."""
    repo = make_registry(tmp_path / "registry")
    remote = make_remote(tmp_path, repo)
    for version in ("2.0.0", "2.1.0"):
        write_version(repo, MODEL, version, content=f"gguf {version}".encode())
    set_environment(repo, "production", {MODEL: "2.0.0"})
    git_commit(repo, "deploy 2.0.0")
    set_environment(repo, "production", {MODEL: "2.1.0"})
    deploy = git_commit(repo, "deploy 2.1.0")
    git(repo, "push", "-q", "origin", "main")
    return repo, remote, deploy


def _revert(host: str) -> triggerrevert.TriggerRevert:
    return triggerrevert.TriggerRevert("production", MODEL, "2.1.0",
                                       f"metric=rating value=1 threshold=3.5 window=60s "
                                       f"host={host}", f"rating fired on {host}")


def test_hosts_racing_push_exactly_one_revert(tmp_path: Path,
                                             deployed: tuple[Path, Path, str]) -> None:
    _, remote, deploy = deployed
    hosts = [f"host-{i}" for i in range(4)]
    outcomes: dict[str, triggerrevert.RevertOutcome] = {}
    start = threading.Barrier(len(hosts))

    def run(host: str) -> None:
        clone = tmp_path / host / "revert.git"
        triggerrevert.prepare_clone(clone, str(remote), host)
        start.wait()
        outcomes[host] = triggerrevert.push_revert(clone, _revert(host))

    threads = [threading.Thread(target=run, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pushed = [h for h, o in outcomes.items() if o.pushed]
    assert len(pushed) == 1 and len(outcomes) == len(hosts)
    assert all(o.converged for h, o in outcomes.items() if h != pushed[0])
    reverts = git(remote, "log", "--format=%H", "--grep", "^Rollback-Trigger:", "main").split()
    assert reverts == [outcomes[pushed[0]].pushed]
    message = git(remote, "log", "-1", "--format=%B", "main")
    assert f"Rollback-Of: {deploy}" in message
    assert f"Rollback-Trigger: metric=rating value=1 threshold=3.5 window=60s " \
           f"host={pushed[0]}" in message
    assert "Reason: rating fired on" in message and "To-Version: 2.0.0" in message
    assert "skip-artifact-check" not in message
    assert "version: 2.0.0" in git(remote, "show", "main:environments/production.yaml")


def test_a_stale_host_converges_instead_of_pushing(tmp_path: Path,
                                                  deployed: tuple[Path, Path, str]) -> None:
    _, remote, _ = deployed
    first, second = tmp_path / "a.git", tmp_path / "b.git"
    triggerrevert.prepare_clone(first, str(remote), "a")
    triggerrevert.prepare_clone(second, str(remote), "b")
    assert triggerrevert.push_revert(first, _revert("a")).pushed
    late = triggerrevert.push_revert(second, _revert("b"))
    assert late.pushed is None and "nothing pushed" in late.note
    assert len(git(remote, "log", "--format=%H", "--grep", "^Rollback-Trigger:").split()) == 1


def test_an_agent_that_trusts_but_cannot_sign_pushes_no_revert_and_says_why(
        tmp_path: Path) -> None:
    """With --trust and no --signing-key, its revert would be unsigned and refused by every
    trusting host: nothing is pushed, the event says what to do, once per version."""
    push = PushSettings(str(tmp_path / "remote.git"), "main", "host-a", tmp_path / "revert.git",
                        unsigned_refused=True)
    notes: list[dict[str, Any]] = []
    watch = TriggerWatch("production", "http://127.0.0.1:9", None, push, notify=notes.append)
    watched = Watched(MODEL, "2.1.0", "2.0.0", NOW - 100, "c0ffee")
    firing = triggers.Firing("error_rate", 0.5, 0.05, 60.0, triggers.ROLLBACK, MODEL, "2.1.0",
                             20)
    assert watch._roll_back(watched, firing, NOW) is False
    assert watched.fired is firing  # not judged again: a person must act
    (event,) = watch.events
    assert event["outcome"] == "push failed" and notes == [event]
    assert "runs with --trust but no --signing-key" in event["error"]
    assert "ggufops rollback --env production --push" in event["error"]
    assert not (tmp_path / "revert.git").exists()  # no clone made, nothing pushed


def test_after_a_restart_the_versions_the_last_applies_brought_are_watched_again(
        tmp_path: Path) -> None:
    """The apply log says when each version came and from which: a version that replaced
    another is watched again from then; one the host only ever ran is not."""
    log = ApplyLog(tmp_path / "applies.db")

    def applied(commit: str, outcome: str = "success", **versions: str) -> float:
        attempt = log.start(commit, "production", {m: {"version": v} for m, v in versions.items()})
        log.finish(attempt, outcome, "healthy" if outcome == "success" else "loading")
        return log.recent(1)[0].finished_at or 0.0

    applied("c1", chat="2.0.0", embed="1.0.0")
    came = applied("c2", chat="2.1.0", embed="1.0.0")
    applied("c3", "failed", chat="2.2.0", embed="1.0.0")
    applied("c4", chat="2.1.0", embed="1.0.0")  # e.g. a policy change: 2.1.0 stays
    successes = [a for a in log.recent(50) if a.outcome == "success"]
    ((watched, span),) = arrivals(successes)
    assert (watched.model, watched.version, watched.previous) == ("chat", "2.1.0", "2.0.0")
    assert (watched.since, watched.commit, span) == (came, "c2", "c1..c4")
    assert arrivals(successes[1:2]) == [] and arrivals([]) == []


def _set_policy(repo: Path, triggers_on: bool) -> None:
    path = repo / "registry" / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy.pop("rollback_triggers", None)
    if triggers_on:
        policy["rollback_triggers"] = {"production": {"window_s": 120, "min_rating": 3.5}}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


def test_a_restart_watches_only_what_a_live_agent_would(tmp_path: Path) -> None:
    """Only a version whose deploy had triggers on, with no rollback since, on real git."""
    repo = make_registry(tmp_path / "registry")
    for version in ("2.0.0", "2.1.0"):
        write_version(repo, MODEL, version, content=f"gguf {version}".encode())
    set_environment(repo, "production", {MODEL: "2.0.0"})
    _set_policy(repo, triggers_on=False)
    base = git_commit(repo, "deploy 2.0.0")
    set_environment(repo, "production", {MODEL: "2.1.0"})
    off = git_commit(repo, "deploy 2.1.0 while triggers are off")
    _set_policy(repo, triggers_on=True)
    later = git_commit(repo, "policy: triggers on")
    watched = Watched(MODEL, "2.1.0", "2.0.0", NOW, off)
    assert not watched_live(repo, "production", watched, f"{base}..{later}")
    on = Watched(MODEL, "2.1.0", "2.0.0", NOW, later)
    assert watched_live(repo, "production", on, f"{base}..{later}")
    assert not watched_live(repo, "staging", on, f"{base}..{later}")
    other = git_commit(repo, "rollback(production): embed 1.1.0 -> 1.0.0\n\n"
                             "Rollback-Of: 0123456789abcdef0123456789abcdef01234567")
    assert not watched_live(repo, "production", on, f"{base}..{other}")
    assert not watched_live(repo, "production", on, f"{base}..{'f' * 40}")  # rewritten


def test_what_a_watch_said_survives_a_restart(tmp_path: Path) -> None:
    """An alert already sent and a rule already fired are not sent or pushed again by the
    watch resumed after a restart (the agent keeps `said()` in its apply log's state)."""
    tree = tmp_path / "tree"
    (tree / "registry").mkdir(parents=True)
    (tree / "registry" / "policy.yaml").write_text(yaml.safe_dump(
        {"rollback_triggers": {"production": {"window_s": 120, "tokens_ratio": 1.5}}}))
    push = PushSettings(str(tmp_path / "remote.git"), "main", "host-a", tmp_path / "r.git")
    before = TriggerWatch("production", "http://127.0.0.1:9", None, push)
    before.resume(tree, [Watched(MODEL, "2.1.0", "2.0.0", NOW, "c0ffee")])
    before.watched[MODEL].alerted.add("tokens_ratio")
    before.watched[MODEL].fired = triggers.Firing("error_rate", 0.5, 0.05, 60.0,
                                                  triggers.ROLLBACK, MODEL, "2.1.0", 20)
    said = json.loads(json.dumps(before.said()))  # as the apply log keeps it
    after = TriggerWatch("production", "http://127.0.0.1:9", None, push)
    after.resume(tree, [Watched(MODEL, "2.1.0", "2.0.0", NOW, "c0ffee")], said)
    assert after.said() == before.said() and after.watched[MODEL].alerted == {"tokens_ratio"}
    newer = TriggerWatch("production", "http://127.0.0.1:9", None, push)
    newer.resume(tree, [Watched(MODEL, "2.1.0", "2.0.0", NOW + 5, "beef")], said)
    assert newer.watched[MODEL].fired is None and newer.watched[MODEL].alerted == set()
