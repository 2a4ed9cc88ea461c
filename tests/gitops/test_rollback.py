"""`ggufops rollback`: a generated revert of the last deploy, checked against real S3."""

from __future__ import annotations

import json

import pytest
import yaml

from ggufops.gitops import rollback
from testing.fakegithub import FakeGitHub
from testing.repos import git
from testing.scratch import MODEL, OTHER, ScratchS3, cli, ship, ship_canary


@pytest.fixture
def two_deploys(scratch_s3: ScratchS3) -> ScratchS3:
    """production ran MODEL 1.0.0, then 2.0.0, then 2.1.0 (phi-mini 1.0.0 beside it)."""
    ship(scratch_s3.root, f"{MODEL}@1.0.0")
    ship(scratch_s3.root, f"{OTHER}@1.0.0")
    ship(scratch_s3.root, f"{MODEL}@2.0.0")
    ship(scratch_s3.root, f"{MODEL}@2.1.0")
    return scratch_s3


def last_deploy(scratch: ScratchS3, env: str = "production") -> str:
    return git(scratch.root, "log", "-1", "--format=%H", "--grep", f"^deploy({env})", "main")


def test_rollback_push_restores_the_previous_version_with_a_revert(two_deploys: ScratchS3) -> None:
    s = two_deploys
    deployed = last_deploy(s)

    result = cli(s.root, "rollback", "--env", "production", "--reason", "p95 latency +40%",
                 "--push")

    assert result.exit_code == 0, result.output + result.stderr
    assert s.running("production") == {MODEL: "2.0.0", OTHER: "1.0.0"}
    assert s.remote_head() == s.head()
    commit = s.head()
    assert git(s.root, "log", "-1", "--format=%B", commit) == (
        f"rollback(production): {MODEL} 2.1.0 -> 2.0.0\n\n"
        f"This reverts commit {deployed}.\n\n"
        f"Rollback-Of: {deployed}\nReason: p95 latency +40%\nEnvironment: production\n"
        f"Model: {MODEL}\nFrom-Version: 2.1.0\nTo-Version: 2.0.0")
    # the rollback's change is exactly the deploy's change, inverted
    assert git(s.root, "diff", f"{commit}^", commit) == git(s.root, "diff", deployed,
                                                            f"{deployed}^")
    on_disk = yaml.safe_load((s.root / "environments" / "production.yaml").read_text())
    assert on_disk["models"][MODEL] == {"version": "2.0.0"}
    assert git(s.root, "status", "--porcelain") == ""


def test_dry_run_json_plans_exactly_and_changes_nothing(two_deploys: ScratchS3) -> None:
    s = two_deploys
    refs = git(s.root, "for-each-ref")
    result = cli(s.root, "rollback", "--env", "production", "--push", "--dry-run", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    plan = json.loads(result.output)
    assert {k: plan[k] for k in ("action", "env", "model", "from", "to", "rollback_of",
                                 "strategy", "mode", "branch", "artifact_check", "dry_run")} == {
        "action": "rollback", "env": "production", "model": MODEL, "from": "2.1.0",
        "to": "2.0.0", "rollback_of": last_deploy(s), "strategy": "revert", "mode": "push",
        "branch": "main", "artifact_check": "ok", "dry_run": True}
    assert plan["base"] == {"ref": "origin/main", "commit": s.remote_head()}
    assert git(s.root, "for-each-ref") == refs


def test_rollback_to_a_chosen_earlier_version(two_deploys: ScratchS3) -> None:
    s = two_deploys
    deployed = last_deploy(s)
    result = cli(s.root, "rollback", "--env", "production", "--model", MODEL, "--to", "1.0.0",
                 "--push", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(result.output)
    assert (data["from"], data["to"], data["strategy"]) == ("2.1.0", "1.0.0", "restore-entry")
    assert data["rollback_of"] == deployed
    assert s.running("production") == {MODEL: "1.0.0", OTHER: "1.0.0"}
    trailers = git(s.root, "log", "-1", "--format=%(trailers:only,unfold)")
    assert f"Rollback-Of: {deployed}\n" in trailers and "To-Version: 1.0.0" in trailers


def test_to_a_version_that_never_ran_there_needs_the_promotion_policy(
        two_deploys: ScratchS3) -> None:
    s = two_deploys
    result = cli(s.root, "rollback", "--env", "production", "--to", "3.0.0", "--push")
    assert result.exit_code == 1
    assert f"{MODEL}@3.0.0 never ran in production" in result.stderr
    assert "deploy it to staging first" in result.stderr
    unknown = cli(s.root, "rollback", "--env", "production", "--to", "7.7.7", "--push")
    assert unknown.exit_code == 1
    assert f"{MODEL}@7.7.7 is not registered" in unknown.stderr


def test_refused_when_the_target_artifact_is_missing_from_s3(two_deploys: ScratchS3) -> None:
    s = two_deploys
    s.delete(MODEL, "2.0.0")
    remote_before = s.remote_head()

    result = cli(s.root, "rollback", "--env", "production", "--push")

    assert result.exit_code == 1
    assert f"refusing to roll production back to {MODEL}@2.0.0" in result.stderr
    assert f"s3://{s.s3.bucket}/{s.object_key(MODEL, '2.0.0')}" in result.stderr
    assert "missing from the S3 remote" in result.stderr
    assert s.remote_head() == remote_before
    assert s.head() == remote_before
    # the dangerous escape hatch exists, and says what it skipped
    skipped = cli(s.root, "rollback", "--env", "production", "--skip-artifact-check",
                  "--dry-run")
    assert skipped.exit_code == 0
    assert "was NOT checked in the S3 remote" in skipped.output


def test_rollback_with_unrelated_later_commits(two_deploys: ScratchS3) -> None:
    s = two_deploys
    deployed = last_deploy(s)
    s.register(OTHER, "1.1.0")  # an unrelated registry commit
    ship(s.root, f"{OTHER}@1.1.0")  # a later change to the same environment file

    result = cli(s.root, "rollback", "--env", "production", "--model", MODEL, "--push",
                 "--json")

    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(result.output)
    assert data["rollback_of"] == deployed and data["strategy"] == "revert"
    assert s.running("production") == {MODEL: "2.0.0", OTHER: "1.1.0"}
    assert git(s.root, "diff", "--numstat", "HEAD^", "HEAD").split()[:2] == ["1", "1"]


def test_rolling_back_twice_walks_further_back(two_deploys: ScratchS3) -> None:
    s = two_deploys
    assert cli(s.root, "rollback", "--env", "production", "--model", MODEL,
               "--push").exit_code == 0
    second = cli(s.root, "rollback", "--env", "production", "--model", MODEL, "--push")
    assert second.exit_code == 0, second.stderr
    assert s.running("production")[MODEL] == "1.0.0"
    third = cli(s.root, "rollback", "--env", "production", "--model", MODEL, "--push")
    assert third.exit_code == 1
    assert f"{MODEL}@1.0.0 is the first version production ran" in third.stderr


def test_default_model_is_the_one_changed_last(two_deploys: ScratchS3) -> None:
    s = two_deploys
    s.register(OTHER, "1.1.0")
    ship(s.root, f"{OTHER}@1.1.0")
    result = cli(s.root, "rollback", "--env", "production", "--push", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.output)["model"] == OTHER
    assert s.running("production") == {MODEL: "2.1.0", OTHER: "1.0.0"}


def test_local_rollback_commits_on_local_main_only(two_deploys: ScratchS3) -> None:
    s = two_deploys
    remote_before = s.remote_head()
    result = cli(s.root, "rollback", "--env", "production")
    assert result.exit_code == 0, result.stderr
    assert s.remote_head() == remote_before
    assert git(s.root, "rev-parse", "HEAD^") == remote_before
    assert s.running("production")[MODEL] == "2.0.0"


def test_rollback_of_a_pr_merged_deploy(scratch_s3: ScratchS3) -> None:
    s = scratch_s3
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0", "staging")
    assert cli(s.root, "deploy", f"{MODEL}@2.0.0", "--env", "production",
               "--push").exit_code == 0
    branch = f"deploy/production/{MODEL}-2.0.0"
    deployed = git(s.root, "rev-parse", branch)
    git(s.root, "merge", "-q", "--no-ff", "-m", f"Merge pull request #3 from acme/{branch}",
        branch)
    git(s.root, "push", "-q", "origin", "main")

    result = cli(s.root, "rollback", "--env", "production", "--push", "--json")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.output)["rollback_of"] == deployed
    assert s.running("production")[MODEL] == "1.0.0"


def test_rollback_pr_opens_a_pull_request(two_deploys: ScratchS3, fake_github: FakeGitHub) -> None:
    s = two_deploys
    remote_main = s.remote_head()
    result = cli(s.root, "rollback", "--env", "production", "--pr", "--reason", "bad answers")
    assert result.exit_code == 0, result.output + result.stderr
    branch = f"rollback/production/{MODEL}-2.0.0"
    [pull] = fake_github.pulls
    assert pull["head"] == {"ref": branch}
    assert pull["title"] == f"rollback(production): {MODEL} 2.1.0 -> 2.0.0"
    assert "Reason: bad answers" in pull["body"]
    assert s.remote_head() == remote_main
    assert s.running("production", branch, s.remote)[MODEL] == "2.0.0"


def test_push_and_pr_together_is_a_usage_error(scratch_s3: ScratchS3) -> None:
    result = cli(scratch_s3.root, "rollback", "--env", "production", "--push", "--pr")
    assert result.exit_code == 2


def test_nothing_deployed_means_nothing_to_roll_back(scratch_s3: ScratchS3) -> None:
    result = cli(scratch_s3.root, "rollback", "--env", "production", "--push")
    assert result.exit_code == 1
    assert "production runs no model; nothing to roll back" in result.stderr


def test_python_api(two_deploys: ScratchS3) -> None:
    request = rollback.RollbackRequest(env="production", model=MODEL, mode=rollback.PUSH,
                                       reason="api")
    outcome = rollback.rollback(two_deploys.root, request)
    assert outcome.attempts == 1 and outcome.landing is not None
    assert outcome.landing.pushed
    assert outcome.plan.to_version == "2.0.0"


# --- canaries ----------------------------------------------------------------------------

@pytest.fixture
def canary_10(two_deploys: ScratchS3) -> ScratchS3:
    """two_deploys, then 3.0.0 staged and started as production's canary at 10%."""
    ship(two_deploys.root, f"{MODEL}@3.0.0", "staging")
    ship_canary(two_deploys.root, f"{MODEL}@3.0.0", "production", 10)
    return two_deploys


def test_rollback_of_a_canary_start_removes_the_canary(canary_10: ScratchS3) -> None:
    s = canary_10
    started = s.head()
    before_start = s.env_text("production", f"{started}^")

    result = cli(s.root, "rollback", "--env", "production", "--model", MODEL, "--push",
                 "--json")

    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(result.output)
    assert (data["from"], data["to"], data["strategy"], data["artifact_check"]) == (
        "2.1.0", "2.1.0", "revert", "not needed")
    assert (data["canary"], data["from_canary"]) == (
        {"version": "3.0.0", "weight": 0}, {"version": "3.0.0", "weight": 10})
    assert s.canaries("production") == {}
    assert s.running("production") == {MODEL: "2.1.0", OTHER: "1.0.0"}
    assert s.env_text("production") == before_start
    assert git(s.root, "log", "-1", "--format=%B") == (
        f"rollback(production): {MODEL} canary 3.0.0 removed\n\n"
        f"This reverts commit {started}.\n\n"
        f"Rollback-Of: {started}\nEnvironment: production\nModel: {MODEL}\n"
        "From-Version: 2.1.0\nTo-Version: 2.1.0\nCanary-Version: 3.0.0\nCanary-Weight: 0")
    assert s.remote_head() == s.head()


def test_rollback_of_a_ramp_restores_the_weight_then_walks_back(canary_10: ScratchS3) -> None:
    s = canary_10
    ship_canary(s.root, f"{MODEL}@3.0.0", "production", 25)
    ramp = s.head()

    result = cli(s.root, "rollback", "--env", "production", "--push", "--json")

    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(result.output)
    assert (data["rollback_of"], data["artifact_check"]) == (ramp, "ok")
    assert s.canaries("production") == {MODEL: {"version": "3.0.0", "weight": 10}}
    assert git(s.root, "log", "-1", "--format=%s") == \
        f"rollback(production): {MODEL} canary 3.0.0 (25%) -> 3.0.0 (10%)"
    assert git(s.root, "diff", "--numstat", "HEAD^", "HEAD").split()[:2] == ["1", "1"]
    # next: the canary start is undone, then the primary deploy before it
    assert cli(s.root, "rollback", "--env", "production", "--push").exit_code == 0
    assert s.canaries("production") == {}
    assert s.running("production")[MODEL] == "2.1.0"
    assert cli(s.root, "rollback", "--env", "production", "--push").exit_code == 0
    assert s.running("production")[MODEL] == "2.0.0"


def test_rollback_of_a_promoted_canary_brings_the_canary_back(canary_10: ScratchS3) -> None:
    s = canary_10
    before = s.env_text("production")
    ship(s.root, f"{MODEL}@3.0.0", "production")
    assert s.canaries("production") == {}
    result = cli(s.root, "rollback", "--env", "production", "--push")
    assert result.exit_code == 0, result.output + result.stderr
    assert s.env_text("production") == before
    assert git(s.root, "log", "-1", "--format=%s") == \
        f"rollback(production): {MODEL} 3.0.0 -> 2.1.0"


def test_canary_rollback_when_the_revert_does_not_apply(canary_10: ScratchS3) -> None:
    """A hand edit next to the canary block: the canary is removed entry-wise instead."""
    s = canary_10
    path = s.root / "environments" / "production.yaml"
    path.write_text(path.read_text().replace("      weight: 10\n",
                                             "      weight: 10  # watch p95\n"))
    git(s.root, "commit", "-qam", "note on the canary")
    git(s.root, "push", "-q", "origin", "main")
    result = cli(s.root, "rollback", "--env", "production", "--model", MODEL, "--push",
                 "--json")
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.output)["strategy"] == "restore-entry"
    assert s.canaries("production") == {}
    assert s.running("production") == {MODEL: "2.1.0", OTHER: "1.0.0"}
