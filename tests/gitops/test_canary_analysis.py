"""Canary analysis in git: `deploy --steps` writes the plan, `validate` rejects bad plans
with file:line, the agent's decision commits (step, promote, abort) are pushed once on the
analysed commit, and `history` shows them. Real git repositories with a bare remote."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from ggufops.gitops import canarystep, history, triggerrevert
from ggufops.registry.validate import validate_repo
from testing.repos import git, line_of
from testing.scratch import MODEL, OTHER, Scratch, cli, ship

ANALYSIS = "verdict=pass requests=60/540 error_rate=0.0000/0.0000 p95_ratio=1.01 " \
    "rating=-/- window=61s host=host-a"


@pytest.fixture
def staged(scratch: Scratch) -> Scratch:
    ship(scratch.root, f"{MODEL}@1.0.0")
    ship(scratch.root, f"{MODEL}@2.0.0", "staging")
    return scratch


def _deploy_planned(s: Scratch, *extra: str) -> None:
    result = cli(s.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary", "10",
                 "--steps", "10,25,50,100", "--analysis-interval", "60", "--direct", "--push",
                 *extra)
    assert result.exit_code == 0, result.output + result.stderr


def test_deploy_with_steps_writes_the_plan_into_the_entry(staged: Scratch) -> None:
    _deploy_planned(staged)
    assert staged.canaries("production") == {MODEL: {
        "version": "2.0.0", "weight": 10,
        "analysis": {"steps": [10, 25, 50, 100], "interval": 60}}}
    assert "      analysis: {steps: [10, 25, 50, 100], interval: 60}\n" in \
        staged.env_text("production")
    body = git(staged.root, "log", "-1", "--format=%B")
    assert "Canary analysis: steps 10,25,50,100, one every 60 s" in body
    assert validate_repo(staged.root) == []


@pytest.mark.parametrize(("steps", "interval", "message"), [
    ("10,50,25,100", "60", "--steps: steps 10,50,25,100 must be strictly increasing"),
    ("25,50,100", "60", "the first step must be the --canary weight 10"),
    ("10,25,50", "60", "--steps: steps 10,25,50 must end with 100"),
    ("10,x", "60", "--steps: '10,x' is not a comma-separated list"),
    ("10,100", "0.5", "0.5 is not in the range x>=1"),
])
def test_bad_plans_are_refused_before_anything_is_written(staged: Scratch, steps: str,
                                                          interval: str, message: str) -> None:
    before = staged.head()
    result = cli(staged.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary",
                 "10", "--steps", steps, "--analysis-interval", interval)
    assert result.exit_code == 2
    assert message in result.output + result.stderr
    assert staged.head() == before
    assert git(staged.root, "branch", "--list", "deploy/*") == ""


def test_steps_need_a_canary(staged: Scratch) -> None:
    result = cli(staged.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--steps",
                 "10,100")
    assert result.exit_code == 2
    assert "--steps and --analysis-interval plan a canary: add --canary" in result.stderr


def _write_plan(s: Scratch, canary: dict[str, object]) -> Path:
    path = s.root / "environments" / "production.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["models"][MODEL]["canary"] = canary
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(("weight", "analysis", "message"), [
    (10, {"steps": [10, 50, 25, 100], "interval": 60}, "must be strictly increasing"),
    (10, {"steps": [10, 25, 50], "interval": 60}, "must end with 100 (the promotion)"),
    (30, {"steps": [10, 25, 50, 100], "interval": 60}, "the canary's weight 30 is not one of"),
    (100, {"steps": [100], "interval": 60}, "must start and stay below 100"),
    (100, {"steps": [10, 100], "interval": 60}, "must start and stay below 100"),
    (10, {"steps": [10, 100], "interval": 0.5}, "0.5 is less than the minimum of 1"),
])
def test_validate_names_the_line_of_a_bad_plan(staged: Scratch, weight: int,
                                               analysis: dict[str, object], message: str) -> None:
    path = _write_plan(staged, {"version": "2.0.0", "weight": weight, "analysis": analysis})
    key = "steps:" if "interval" not in message and "minimum" not in message else "interval:"
    line = line_of(path, lambda text: text.strip().startswith(key))
    (problem,) = [str(p) for p in validate_repo(staged.root)]
    assert problem.startswith(f"environments/production.yaml:{line}:")
    assert message in problem


# --- the decision commits -----------------------------------------------------------------


def _clone(s: Scratch, host: str) -> Path:
    clone = s.tmp / f"revert-{host}.git"
    triggerrevert.prepare_clone(clone, str(s.remote), host)
    return clone


def _decision(s: Scratch, kind: str, weight: int, next_weight: int) -> canarystep.Decision:
    return canarystep.Decision("production", MODEL, "1.0.0", "2.0.0", weight, kind, next_weight,
                               ANALYSIS, "canary analysis passed at 10%", s.remote_head())


def test_a_step_commit_sets_the_next_weight_and_keeps_the_plan(staged: Scratch) -> None:
    _deploy_planned(staged)
    analysed = staged.remote_head()
    outcome = canarystep.push_decision(_clone(staged, "host-a"),
                                       _decision(staged, canarystep.STEP, 10, 25))
    assert outcome.pushed == staged.remote_head()
    assert git(staged.remote, "rev-parse", "main^") == analysed
    git(staged.root, "pull", "-q", "--ff-only")
    assert staged.canaries("production")[MODEL] == {
        "version": "2.0.0", "weight": 25,
        "analysis": {"steps": [10, 25, 50, 100], "interval": 60}}
    message = git(staged.remote, "log", "-1", "--format=%B")
    assert message.startswith(f"canary-step(production): {MODEL} canary 2.0.0 10% -> 25%\n")
    assert "Canary-Step: 25\n" in message and f"Canary-Analysis: {ANALYSIS}" in message


def test_two_hosts_deciding_on_one_commit_push_exactly_one(staged: Scratch) -> None:
    _deploy_planned(staged)
    decision = _decision(staged, canarystep.STEP, 10, 25)
    first = canarystep.push_decision(_clone(staged, "host-a"), decision)
    second = canarystep.push_decision(_clone(staged, "host-b"), decision)
    assert first.pushed is not None and second.pushed is None
    assert "moved from" in second.note
    assert git(staged.remote, "rev-list", "--count", f"{decision.analysed}..main") == "1"


def test_a_push_losing_the_race_after_the_fetch_is_refused(staged: Scratch,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The compare-and-swap itself: host B fetched the analysed tip, host A pushed before
    B's push; the remote refuses B's commit (no force) and B converges."""
    _deploy_planned(staged)
    decision = _decision(staged, canarystep.STEP, 10, 25)
    clone_a, clone_b = _clone(staged, "host-a"), _clone(staged, "host-b")
    real_fetch = canarystep.git.fetch_branch

    raced: list[bool] = []

    def fetch_then_lose(clone: Path, remote: str, branch: str, timeout: float = 300) -> None:
        real_fetch(clone, remote, branch, timeout)
        if clone == clone_b and not raced:  # A pushes between B's first fetch and push
            raced.append(True)
            assert canarystep.push_decision(clone_a, decision).pushed is not None

    monkeypatch.setattr(canarystep.git, "fetch_branch", fetch_then_lose)
    on_b = dataclasses.replace(decision, analysis=ANALYSIS.replace("host-a", "host-b"))
    outcome = canarystep.push_decision(clone_b, on_b)
    assert outcome.pushed is None and "another host decided first" in outcome.note
    assert git(staged.remote, "rev-list", "--count", f"{decision.analysed}..main") == "1"
    assert "host=host-a" in git(staged.remote, "log", "-1", "--format=%B")


def test_the_same_commit_pushed_twice_counts_once(staged: Scratch) -> None:
    """Two hosts that build byte-identical commits (same figures, same identity, same
    second): the second push is "up to date", and only the first says it pushed."""
    _deploy_planned(staged)
    decision = _decision(staged, canarystep.STEP, 10, 25)
    clone = _clone(staged, "host-a")
    assert canarystep.push_decision(clone, decision).pushed is not None
    git(clone, "update-ref", "refs/remotes/origin/main", decision.analysed)
    again = canarystep.git.push(clone, "origin", staged.remote_head(), "main")
    assert again.ok and "up to date" in again.detail


def test_promote_and_abort_commits_and_their_history(staged: Scratch) -> None:
    _deploy_planned(staged)
    started = staged.remote_head()
    canarystep.push_decision(_clone(staged, "host-a"), _decision(staged, canarystep.STEP, 10, 25))
    abort = canarystep.Decision("production", MODEL, "1.0.0", "2.0.0", 25, canarystep.ABORT, 0,
                                ANALYSIS.replace("verdict=pass", "verdict=fail metric=p95_ratio"),
                                "canary analysis failed on p95_ratio", staged.remote_head())
    outcome = canarystep.push_decision(_clone(staged, "host-b"), abort)
    assert outcome.pushed is not None
    message = git(staged.remote, "log", "-1", "--format=%B")
    assert message.startswith(f"abort(production): {MODEL} canary 2.0.0 removed")
    assert f"Rollback-Of: {started}\n" in message and "Canary-Step: 0\n" in message
    git(staged.root, "pull", "-q", "--ff-only")
    assert staged.canaries("production") == {}
    assert staged.running("production")[MODEL] == "1.0.0"

    _deploy_planned(staged)
    promote = canarystep.Decision("production", MODEL, "1.0.0", "2.0.0", 50,
                                  canarystep.PROMOTE, 100, ANALYSIS, "passed",
                                  staged.remote_head())
    assert canarystep.push_decision(_clone(staged, "host-a"), promote).pushed is not None
    git(staged.root, "pull", "-q", "--ff-only")
    assert staged.canaries("production") == {}
    assert staged.running("production")[MODEL] == "2.0.0"

    events = history.read_history(staged.root, "production", "main", model=MODEL,
                                  with_metrics=False)
    kinds = [(e.kind, e.from_version, e.to_version, e.canary_weight) for e in events[-5:]]
    assert kinds == [("canary", "1.0.0", "1.0.0", 10), ("canary-step", "1.0.0", "1.0.0", 25),
                     ("abort", "1.0.0", "1.0.0", 0), ("canary", "1.0.0", "1.0.0", 10),
                     ("promote", "1.0.0", "2.0.0", None)]
    assert events[-5].rolled_back_by == events[-3].commit
    assert all(e.analysis and "host=host-a" in e.analysis for e in (events[-4], events[-1]))
    shown = cli(staged.root, "history", "--env", "production")
    assert "canary-step" in shown.output and "[verdict=pass requests=60/540" in shown.output
    data = json.loads(cli(staged.root, "history", "--env", "production", "--json").output)
    rows = data if isinstance(data, list) else data["deployments"]
    assert [r["kind"] for r in rows][-3:] == ["abort", "canary", "promote"]
    assert rows[-1]["analysis"] == ANALYSIS
    db = staged.tmp / "deployments.sqlite"
    assert cli(staged.root, "history", "--env", "production", "--sqlite", str(db)).exit_code == 0
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT kind, analysis FROM deployments WHERE kind IN "
                              "('canary-step', 'abort', 'promote') ORDER BY id").fetchall()
    assert [k for k, _ in stored] == ["canary-step", "abort", "promote"]
    assert all(a and a.startswith("verdict=") for _, a in stored)


def _abort_after_a_step(s: Scratch) -> None:
    """A planned canary of 2.1.0 on 2.0.0, stepped to 25 and aborted by the agents' commits."""
    result = cli(s.root, "deploy", f"{MODEL}@2.1.0", "--env", "production", "--canary", "10",
                 "--steps", "10,25,50,100", "--direct", "--push")
    assert result.exit_code == 0, result.output + result.stderr
    step = canarystep.Decision("production", MODEL, "2.0.0", "2.1.0", 10, canarystep.STEP, 25,
                               ANALYSIS, "passed", s.remote_head())
    canarystep.push_decision(_clone(s, "host-a"), step)
    abort = canarystep.Decision("production", MODEL, "2.0.0", "2.1.0", 25, canarystep.ABORT, 0,
                                ANALYSIS.replace("verdict=pass", "verdict=fail metric=p95_ratio"),
                                "canary analysis failed on p95_ratio", s.remote_head())
    assert canarystep.push_decision(_clone(s, "host-b"), abort).pushed is not None
    git(s.root, "pull", "-q", "--ff-only")


@pytest.mark.parametrize("group", [False, True])
def test_rollback_after_an_abort_undoes_the_primarys_last_deploy(scratch: Scratch,
                                                                 group: bool) -> None:
    """The abort is a rollback (Rollback-Of), and the aborted canary's step is a change of
    a canary the entry no longer has: `rollback` (and `rollback --models`) passes over them
    to the deploy of 2.0.0."""
    s = scratch
    for ref in (f"{MODEL}@1.0.0", f"{OTHER}@1.0.0", f"{MODEL}@2.0.0"):
        ship(s.root, ref)
    if group:  # OTHER needs a deploy to roll back too
        s.register(OTHER, "1.1.0")
        ship(s.root, f"{OTHER}@1.1.0")
    ship(s.root, f"{MODEL}@2.1.0", "staging")
    _abort_after_a_step(s)
    assert s.canaries("production") == {} and s.running("production")[MODEL] == "2.0.0"
    which = ["--models", f"{MODEL},{OTHER}"] if group else ["--model", MODEL]
    result = cli(s.root, "rollback", "--env", "production", *which, "--push", "--reason",
                 "after the abort", "--skip-artifact-check")  # no S3 here
    assert result.exit_code == 0, result.output + result.stderr
    git(s.root, "pull", "-q", "--ff-only")
    assert s.running("production")[MODEL] == "1.0.0"
    (deployed,) = [e for e in history.read_history(s.root, "production", "main", model=MODEL,
                                                   with_metrics=False)
                   if e.kind == "deploy" and e.to_version == "2.0.0"]
    assert deployed.rolled_back_by == s.remote_head()


def _ramp(s: Scratch, version: str, weight: int) -> str:
    result = cli(s.root, "deploy", f"{MODEL}@{version}", "--env", "production", "--canary",
                 str(weight), "--direct", "--push")
    assert result.exit_code == 0, result.output + result.stderr
    return result.output


def test_a_manual_ramp_keeps_the_plan_only_on_one_of_its_steps(staged: Scratch) -> None:
    plan = {"steps": [10, 25, 50, 100], "interval": 60}
    _deploy_planned(staged)
    shown = _ramp(staged, "2.0.0", 25)  # a step of the plan: the agents walk on from it
    assert "dropped" not in shown
    assert staged.canaries("production")[MODEL] == {"version": "2.0.0", "weight": 25,
                                                    "analysis": plan}
    shown = _ramp(staged, "2.0.0", 30)  # a weight of its own: ramped by hand from now on
    assert "warning: The canary analysis plan (steps 10,25,50,100) is dropped: 30% is not " \
        "one of its steps" in shown
    assert staged.canaries("production")[MODEL] == {"version": "2.0.0", "weight": 30}
    assert "is dropped" in git(staged.root, "log", "-1", "--format=%B")


def test_a_canary_of_another_version_drops_the_plan(staged: Scratch) -> None:
    _deploy_planned(staged)
    ship(staged.root, f"{MODEL}@2.1.0", "staging")
    shown = _ramp(staged, "2.1.0", 10)
    assert "dropped: it was for canary 2.0.0, this is 2.1.0" in shown
    assert staged.canaries("production")[MODEL] == {"version": "2.1.0", "weight": 10}


def test_rolling_back_a_step_keeps_the_plan_and_the_agents_step_again(staged: Scratch) -> None:
    """A rollback of a canary-step commit restores the previous weight and keeps the plan:
    the agents analyse that weight again, timed from the rollback commit (to stop the
    canary, roll back again: it goes)."""
    _deploy_planned(staged)
    canarystep.push_decision(_clone(staged, "host-a"), _decision(staged, canarystep.STEP, 10, 25))
    git(staged.root, "pull", "-q", "--ff-only")
    result = cli(staged.root, "rollback", "--env", "production", "--push",
                 "--skip-artifact-check")  # no S3 here
    assert result.exit_code == 0, result.output + result.stderr
    git(staged.root, "pull", "-q", "--ff-only")
    assert staged.canaries("production")[MODEL] == {
        "version": "2.0.0", "weight": 10, "analysis": {"steps": [10, 25, 50, 100],
                                                       "interval": 60}}
    events = history.read_history(staged.root, "production", "main", model=MODEL,
                                  with_metrics=False)
    assert (events[-1].kind, events[-1].canary_weight) == ("rollback", 10)


def test_an_abort_names_the_canarys_start_past_a_config_change(staged: Scratch) -> None:
    """A `ggufops config` commit during the canary names no canary: the abort's Rollback-Of
    is still the deploy that started it, so history marks that deploy rolled back."""
    _deploy_planned(staged)
    started = staged.remote_head()
    result = cli(staged.root, "config", "--env", "production", "--model", MODEL, "--set",
                 "temperature=0.2", "--direct", "--push")
    assert result.exit_code == 0, result.output + result.stderr
    abort = canarystep.Decision("production", MODEL, "1.0.0", "2.0.0", 10, canarystep.ABORT, 0,
                                ANALYSIS.replace("verdict=pass", "verdict=fail metric=error_rate"),
                                "canary analysis failed on error_rate", staged.remote_head())
    assert canarystep.push_decision(_clone(staged, "host-a"), abort).pushed is not None
    assert f"Rollback-Of: {started}\n" in git(staged.remote, "log", "-1", "--format=%B")


def test_a_commit_to_another_environment_does_not_void_a_decision(staged: Scratch) -> None:
    """The compare-and-swap is on the environment file: a commit that changed only
    staging between the analysis and the push takes the step on top of it."""
    _deploy_planned(staged)
    decision = _decision(staged, canarystep.STEP, 10, 25)
    ship(staged.root, f"{MODEL}@2.1.0", "staging")  # another environment's change lands
    unrelated = staged.remote_head()
    outcome = canarystep.push_decision(_clone(staged, "host-a"), decision)
    assert outcome.pushed == staged.remote_head()
    assert git(staged.remote, "rev-parse", "main^") == unrelated
    git(staged.root, "pull", "-q", "--ff-only")
    assert staged.canaries("production")[MODEL]["weight"] == 25
    assert staged.running("staging")[MODEL] == "2.1.0"


def test_an_abort_goes_on_top_of_another_hosts_step(staged: Scratch) -> None:
    """Host A passed the step on its traffic and pushed first; host B failed it on its own:
    its abort is not discarded but lands on top of A's step (a second step is not)."""
    _deploy_planned(staged)
    started = staged.remote_head()
    step = _decision(staged, canarystep.STEP, 10, 25)
    abort = dataclasses.replace(step, kind=canarystep.ABORT, next_weight=0,
                                analysis=ANALYSIS.replace("verdict=pass", "verdict=fail "
                                                          "metric=error_rate"),
                                reason="canary analysis failed on error_rate")
    assert canarystep.push_decision(_clone(staged, "host-a"), step).pushed is not None
    stepped = staged.remote_head()
    outcome = canarystep.push_decision(_clone(staged, "host-b"), abort)
    assert outcome.pushed == staged.remote_head()
    assert git(staged.remote, "rev-parse", "main^") == stepped
    message = git(staged.remote, "log", "-1", "--format=%B")
    assert message.startswith(f"abort(production): {MODEL} canary 2.0.0 removed")
    assert f"Rollback-Of: {started}\n" in message
    git(staged.root, "pull", "-q", "--ff-only")
    assert staged.canaries("production") == {}
    again = canarystep.push_decision(_clone(staged, "host-c"), step)  # a stale step: no
    assert again.pushed is None and "moved from" in again.note


def test_an_abort_for_lack_of_traffic_does_not_go_on_top_of_another_hosts_step(
        staged: Scratch) -> None:
    """Host B's step waited past its progress deadline without traffic while host A passed
    it on its own: A's step is the progress B waited for, so B's abort is not pushed."""
    _deploy_planned(staged)
    step = _decision(staged, canarystep.STEP, 10, 25)
    idle = dataclasses.replace(step, kind=canarystep.ABORT, next_weight=0, on_evidence=False,
                               analysis=ANALYSIS.replace("verdict=pass", "verdict=fail "
                                                         "metric=progress_deadline"),
                               reason="canary analysis failed on progress_deadline")
    assert canarystep.push_decision(_clone(staged, "host-a"), step).pushed is not None
    stepped = staged.remote_head()
    outcome = canarystep.push_decision(_clone(staged, "host-b"), idle)
    assert outcome.pushed is None and "moved from" in outcome.note
    assert staged.remote_head() == stepped
    # on the state it analysed, the same abort lands: the deadline is the policy's to set
    fresh = dataclasses.replace(idle, analysed=stepped, weight=25)
    assert canarystep.push_decision(_clone(staged, "host-c"), fresh).pushed is not None
    assert git(staged.remote, "log", "-1", "--format=%s").startswith(
        f"abort(production): {MODEL} canary 2.0.0 removed")
