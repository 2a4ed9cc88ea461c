"""Changes racing for the same environment: none may be lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ggufops import git as gitops_git
from ggufops.errors import NonFastForward, PushRejected
from ggufops.gitops import deploy, rollback
from ggufops.registry import validate
from ggufops.registry.registry import VersionRef
from testing.repos import git
from testing.scratch import MODEL, OTHER, Scratch, ScratchS3, cli, ship
from testing.workflows import open_pull_request


def test_second_of_two_racing_direct_deploys_is_rejected_and_told_to_rebase(
        scratch: Scratch) -> None:
    s = scratch
    alice, bob = s.clone("alice"), s.clone("bob")
    bob_plan = deploy.plan_deploy(bob, VersionRef(OTHER, "1.0.0"), "staging", direct=True,
                                  push=True)
    assert cli(alice, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--direct",
               "--push").exit_code == 0
    remote_after_alice = s.remote_head()
    bob_main = git(bob, "rev-parse", "main")

    with pytest.raises(NonFastForward) as info:
        deploy.apply_deploy(bob, bob_plan)

    assert str(info.value) == (
        "origin/main moved while the deploy ran ([rejected] (fetch first): someone else "
        "pushed first); nothing was changed: rebase (`git pull --rebase origin main`) and run "
        "the deploy again")
    assert s.remote_head() == remote_after_alice
    assert git(bob, "rev-parse", "main") == bob_main  # bob's checkout untouched
    # following the advice loses nothing
    git(bob, "pull", "-q", "--rebase", "origin", "main")
    assert cli(bob, "deploy", f"{OTHER}@1.0.0", "--env", "staging", "--direct",
               "--push").exit_code == 0
    assert s.running("staging", where=s.remote) == {MODEL: "1.0.0", OTHER: "1.0.0"}


def test_the_cli_reports_the_race_as_a_one_line_error(scratch: Scratch,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s = scratch
    alice, bob = s.clone("alice"), s.clone("bob")
    real_push = gitops_git.push
    fired: list[bool] = []

    def alice_pushes_first(*args: Any, **kwargs: Any) -> gitops_git.PushOutcome:
        if not fired:
            fired.append(True)
            assert cli(alice, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--direct",
                       "--push").exit_code == 0
        return real_push(*args, **kwargs)

    monkeypatch.setattr(gitops_git, "push", alice_pushes_first)
    result = cli(bob, "deploy", f"{OTHER}@1.0.0", "--env", "staging", "--direct", "--push")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "someone else pushed first" in result.stderr
    assert "git pull --rebase origin main" in result.stderr


def _another_push_lands_first(remote: Path, commit: str) -> None:
    """A pre-receive hook that moves main to `commit` while the push is being received:
    the push then loses the race inside the remote ("failed to update ref")."""
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\n"
                    "env -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY "
                    f"git update-ref refs/heads/main {commit}\n")
    hook.chmod(0o755)


def test_a_deploy_that_loses_the_race_inside_the_remote_is_told_to_rebase(
        scratch: Scratch) -> None:
    s = scratch
    alice, bob = s.clone("alice"), s.clone("bob")
    git(alice, "commit", "-q", "--allow-empty", "-m", "alice's change")
    alice_commit = git(alice, "rev-parse", "HEAD")
    git(alice, "push", "-q", "origin", "HEAD:refs/heads/alice")  # her objects are there
    _another_push_lands_first(s.remote, alice_commit)

    result = cli(bob, "deploy", f"{OTHER}@1.0.0", "--env", "staging", "--direct", "--push")

    assert result.exit_code == 1
    assert result.stderr == (
        "error: origin/main moved while the deploy ran ([remote rejected] (failed to update "
        "ref): someone else pushed first); nothing was changed: rebase (`git pull --rebase "
        "origin main`) and run the deploy again\n")
    assert "branch protection" not in result.stderr
    assert s.remote_head() == alice_commit  # alice's push stands, bob's changed nothing


def test_a_remote_refusal_that_is_no_race_still_points_at_permissions(
        scratch: Scratch) -> None:
    s = scratch
    bob = s.clone("bob")
    hook = s.remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'protected branch' >&2\nexit 1\n")
    hook.chmod(0o755)
    result = cli(bob, "deploy", f"{OTHER}@1.0.0", "--env", "staging", "--direct", "--push")
    assert result.exit_code == 1
    assert "origin refused the push to main: [remote rejected] (pre-receive hook declined); " \
        "check branch protection" in result.stderr


def test_same_deploy_branch_pushed_twice_is_rejected(scratch: Scratch) -> None:
    s = scratch
    alice, bob = s.clone("alice"), s.clone("bob")
    assert cli(alice, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--push").exit_code == 0
    git(bob, "commit", "-q", "--allow-empty", "-m", "bob's unrelated local work")
    git(bob, "push", "-q", "origin", "main")
    result = cli(bob, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--push")
    assert result.exit_code == 1
    assert f"origin already has a branch deploy/staging/{MODEL}-1.0.0 with other commits" in \
        result.stderr


def test_rollback_push_rebases_and_retries_when_the_remote_moves(
        scratch_s3: ScratchS3, monkeypatch: pytest.MonkeyPatch) -> None:
    s = scratch_s3
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0")
    colleague = s.clone("colleague")
    real_push = gitops_git.push
    pushes: list[str] = []
    fired: list[bool] = []

    def colleague_pushes_first(root: Path, remote: str, sha: str, branch: str,
                               **kwargs: Any) -> gitops_git.PushOutcome:
        if not fired:
            fired.append(True)
            ship(colleague, f"{OTHER}@1.0.0")
        if root == s.root:
            pushes.append(sha)
        return real_push(root, remote, sha, branch, **kwargs)

    monkeypatch.setattr(gitops_git, "push", colleague_pushes_first)
    outcome = rollback.rollback(s.root, rollback.RollbackRequest(
        env="production", model=MODEL, mode=rollback.PUSH, reason="race"))

    assert outcome.attempts == 2
    assert len(pushes) == 2 and pushes[0] != pushes[1]
    assert outcome.landing is not None and outcome.landing.commit == pushes[1]
    assert s.remote_head() == pushes[1]
    assert s.running("production", where=s.remote) == {MODEL: "1.0.0", OTHER: "1.0.0"}
    # the retried commit sits on the colleague's push, not beside it
    assert git(s.remote, "log", "-1", "--format=%s", "main^") == \
        f"deploy(production): {OTHER} (new) -> 1.0.0"


def test_rollback_race_lost_to_an_identical_rollback_is_not_an_error(
        scratch_s3: ScratchS3, monkeypatch: pytest.MonkeyPatch) -> None:
    s = scratch_s3
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0")
    colleague = s.clone("colleague")
    real_push = gitops_git.push
    calls: list[Path] = []

    def colleague_rolls_back_first(root: Path, *args: Any,
                                   **kwargs: Any) -> gitops_git.PushOutcome:
        calls.append(root)
        if len(calls) == 1:
            assert cli(colleague, "rollback", "--env", "production", "--push", "--reason",
                       "colleague was faster").exit_code == 0
        return real_push(root, *args, **kwargs)

    monkeypatch.setattr(gitops_git, "push", colleague_rolls_back_first)
    result = cli(s.root, "rollback", "--env", "production", "--push")
    assert result.exit_code == 0, result.stderr
    assert "already runs llama3-instruct@1.0.0 (someone else rolled it back)" in result.output
    assert [c for c in calls if c == s.root] == [s.root]
    assert s.running("production", where=s.remote)[MODEL] == "1.0.0"


def test_rollback_gives_up_after_bounded_retries(scratch_s3: ScratchS3,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s = scratch_s3
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0")
    attempts: list[int] = []

    def always_rejected(*args: Any, **kwargs: Any) -> gitops_git.PushOutcome:
        attempts.append(1)
        return gitops_git.PushOutcome(False, True, "[rejected] (fetch first)")

    monkeypatch.setattr(gitops_git, "push", always_rejected)
    with pytest.raises(NonFastForward):
        rollback.rollback(s.root, rollback.RollbackRequest(env="production", mode=rollback.PUSH),
                          max_attempts=3)
    assert len(attempts) == 3


def test_protected_branch_refusal_is_not_retried(scratch_s3: ScratchS3,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s = scratch_s3
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0")
    monkeypatch.setattr(gitops_git, "push", lambda *a, **k: gitops_git.PushOutcome(
        False, False, "[remote rejected] (protected branch hook declined)"))
    result = cli(s.root, "rollback", "--env", "production", "--push")
    assert result.exit_code == 1
    assert "origin refused the push to main: [remote rejected] (protected branch hook " \
        "declined); check branch protection" in result.stderr
    with pytest.raises(PushRejected):
        rollback.rollback(s.root, rollback.RollbackRequest(env="production", mode=rollback.PUSH))


def test_two_deploy_prs_for_one_environment_both_land_and_ci_sees_the_merge(
        scratch: Scratch) -> None:
    s = scratch
    s.register(OTHER, "1.1.0")
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{OTHER}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0", "staging")
    ship(s.root, f"{OTHER}@1.1.0", "staging")
    alice, bob = s.clone("alice"), s.clone("bob")
    assert cli(alice, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--push").exit_code == 0
    assert cli(bob, "deploy", f"{OTHER}@1.1.0", "--env", "production", "--push").exit_code == 0
    # PR 1 merges; PR 2's merge result is computed against the new base, as GitHub does
    first = open_pull_request(s.remote, s.tmp, f"deploy/production/{MODEL}-2.0.0", 1)
    git(s.remote, "update-ref", "refs/heads/main", first)
    second = open_pull_request(s.remote, s.tmp, f"deploy/production/{OTHER}-1.1.0", 2)

    ci = s.clone("ci")
    git(ci, "fetch", "-q", "origin", "refs/pull/2/merge")
    git(ci, "checkout", "-q", "--detach", second)
    assert s.running("production", "HEAD", ci) == {MODEL: "2.0.0", OTHER: "1.1.0"}
    assert validate.validate_repo(ci, base="origin/main") == []
