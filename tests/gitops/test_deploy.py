"""`ggufops deploy`: one commit, one entry, on a branch from the up-to-date default branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ggufops import git as gitops_git
from ggufops.gitops import deploy
from ggufops.registry.registry import VersionRef
from testing.fakegithub import FakeGitHub
from testing.repos import git
from testing.scratch import MODEL, OTHER, Scratch, cli, ship, ship_canary


def comment_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "#" in line]


def test_deploy_makes_one_commit_changing_one_entry_on_a_branch(scratch: Scratch) -> None:
    ship(scratch.root, f"{MODEL}@1.0.0")
    ship(scratch.root, f"{OTHER}@1.0.0")
    ship(scratch.root, f"{MODEL}@2.0.0", "staging")
    main_before = scratch.head()
    before = scratch.env_text("production")

    result = cli(scratch.root, "deploy", f"{MODEL}@2.0.0", "--env", "production")

    assert result.exit_code == 0, result.output + result.stderr
    branch = f"deploy/production/{MODEL}-2.0.0"
    assert git(scratch.root, "rev-list", "--count", f"main..{branch}") == "1"
    assert git(scratch.root, "rev-parse", f"{branch}^") == main_before
    assert git(scratch.root, "diff", "--name-only", f"{branch}^", branch) == \
        "environments/production.yaml"
    after = scratch.env_text("production", branch)
    old, new = yaml.safe_load(before)["models"], yaml.safe_load(after)["models"]
    assert new == {**old, MODEL: {"version": "2.0.0"}}
    assert comment_lines(after) == comment_lines(before)
    assert len(comment_lines(after)) == 3
    numstat = git(scratch.root, "diff", "--numstat", f"{branch}^", branch)
    assert numstat.split()[:2] == ["1", "1"]
    assert git(scratch.root, "log", "-1", "--format=%B", branch) == (
        f"deploy(production): {MODEL} 1.0.0 -> 2.0.0\n\n"
        f"Environment: production\nModel: {MODEL}\nFrom-Version: 1.0.0\nTo-Version: 2.0.0")
    # the checkout was never switched: still on main, unchanged, clean
    assert gitops_git.current_branch(scratch.root) == "main"
    assert scratch.head() == main_before
    assert git(scratch.root, "status", "--porcelain") == ""


def test_first_deploy_of_a_model_says_new(scratch: Scratch) -> None:
    result = cli(scratch.root, "deploy", f"{OTHER}@1.0.0", "--env", "staging", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["from"] is None
    assert data["message"].startswith(f"deploy(staging): {OTHER} (new) -> 1.0.0\n")
    assert "From-Version: none\n" in data["message"]
    assert data["result"]["branch"] == f"deploy/staging/{OTHER}-1.0.0"


def test_dry_run_json_is_the_exact_plan_and_changes_nothing(scratch: Scratch) -> None:
    ship(scratch.root, f"{MODEL}@1.0.0")
    ship(scratch.root, f"{MODEL}@2.0.0", "staging")
    refs_before = git(scratch.root, "for-each-ref")

    result = cli(scratch.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--dry-run",
                 "--json")

    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert {k: plan[k] for k in ("action", "env", "model", "from", "to", "mode", "branch",
                                 "file", "push", "pr", "dry_run")} == {
        "action": "deploy", "env": "production", "model": MODEL, "from": "1.0.0", "to": "2.0.0",
        "mode": "branch", "branch": f"deploy/production/{MODEL}-2.0.0",
        "file": "environments/production.yaml", "push": False, "pr": False, "dry_run": True}
    assert plan["base"] == {"ref": "main", "commit": scratch.head()}
    assert "-    version: 1.0.0\n+    version: 2.0.0\n" in plan["diff"]
    assert git(scratch.root, "for-each-ref") == refs_before
    # applying that plan produces exactly the planned file
    applied = cli(scratch.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--json")
    assert json.loads(applied.output)["diff"] == plan["diff"]


def test_direct_push_lands_on_the_remote_and_updates_the_checkout(scratch: Scratch) -> None:
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--direct",
                 "--push")
    assert result.exit_code == 0, result.output
    assert scratch.remote_head() == scratch.head()
    assert git(scratch.root, "log", "-1", "--format=%s") == \
        f"deploy(staging): {MODEL} (new) -> 1.0.0"
    on_disk = yaml.safe_load((scratch.root / "environments" / "staging.yaml").read_text())
    assert on_disk["models"] == {MODEL: {"version": "1.0.0"}}
    assert git(scratch.root, "status", "--porcelain") == ""


def test_push_publishes_the_branch(scratch: Scratch) -> None:
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--push")
    assert result.exit_code == 0, result.output
    branch = f"deploy/staging/{MODEL}-1.0.0"
    assert git(scratch.remote, "rev-parse", branch) == git(scratch.root, "rev-parse", branch)
    assert git(scratch.remote, "rev-parse", "main") == scratch.head()


def test_dirty_tree_is_refused(scratch: Scratch) -> None:
    env_file = scratch.root / "environments" / "staging.yaml"
    env_file.write_text(env_file.read_text() + "# local note\n")
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging")
    assert result.exit_code == 1
    assert "uncommitted changes (environments/staging.yaml)" in result.stderr
    assert "commit or stash them" in result.stderr
    assert git(scratch.root, "branch", "--list", "deploy/*") == ""


def test_unknown_version_is_refused(scratch: Scratch) -> None:
    result = cli(scratch.root, "deploy", f"{MODEL}@9.9.9", "--env", "staging")
    assert result.exit_code == 1
    assert f"{MODEL}@9.9.9 is not registered" in result.stderr
    bad = cli(scratch.root, "deploy", "not a ref", "--env", "staging")
    assert bad.exit_code == 2


def test_version_registered_only_in_the_working_tree_is_refused(scratch: Scratch) -> None:
    scratch.register(MODEL, "4.0.0", push=False)
    git(scratch.root, "reset", "-q", "--soft", "HEAD~1")
    git(scratch.root, "reset", "-q")
    result = cli(scratch.root, "deploy", f"{MODEL}@4.0.0", "--env", "staging")
    assert result.exit_code == 1
    assert "registered in the working tree" in result.stderr
    assert "merge its registration first" in result.stderr


def test_unknown_environment_is_a_usage_error(scratch: Scratch) -> None:
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "moon")
    assert result.exit_code == 2
    assert "no environment 'moon'" in result.stderr
    assert "known: production, staging" in result.stderr


def test_already_running_version_is_refused(scratch: Scratch) -> None:
    ship(scratch.root, f"{MODEL}@1.0.0", "staging")
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging")
    assert result.exit_code == 1
    assert f"staging already runs {MODEL}@1.0.0" in result.stderr


def test_promotion_order_is_enforced(scratch: Scratch) -> None:
    result = cli(scratch.root, "deploy", f"{MODEL}@2.0.0", "--env", "production")
    assert result.exit_code == 1
    assert f"{MODEL}@2.0.0 does not run in staging" in result.stderr
    assert "deploy it to staging first" in result.stderr


def test_local_branch_behind_its_remote_is_refused(scratch: Scratch) -> None:
    other = scratch.clone("colleague")
    ship(other, f"{MODEL}@1.0.0", "staging")
    result = cli(scratch.root, "deploy", f"{OTHER}@1.0.0", "--env", "staging")
    assert result.exit_code == 1
    assert "local main is 1 commit(s) behind origin/main" in result.stderr
    assert "git pull --ff-only origin main" in result.stderr


def test_existing_branch_is_refused(scratch: Scratch) -> None:
    assert cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging").exit_code == 0
    again = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging")
    assert again.exit_code == 1
    assert f"branch deploy/staging/{MODEL}-1.0.0 already exists" in again.stderr


def test_push_without_a_remote_is_refused(registry_repo: Path) -> None:
    from testing.repos import git_commit, write_version

    write_version(registry_repo, MODEL, "1.0.0")
    git_commit(registry_repo, "register")
    result = cli(registry_repo, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--push")
    assert result.exit_code == 1
    assert "no git remote 'origin'" in result.stderr
    # without --push a repository with no remote works
    assert cli(registry_repo, "deploy", f"{MODEL}@1.0.0", "--env", "staging",
               "--direct").exit_code == 0


def test_pr_opens_a_pull_request(scratch: Scratch, fake_github: FakeGitHub) -> None:
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--pr")
    assert result.exit_code == 0, result.output + result.stderr
    assert "pull request #1 opened: https://github.test/acme/models/pull/1" in result.output
    [pull] = fake_github.pulls
    assert pull["head"] == {"ref": f"deploy/staging/{MODEL}-1.0.0"}
    assert pull["base"] == {"ref": "main"}
    assert pull["title"] == f"deploy(staging): {MODEL} (new) -> 1.0.0"
    assert f"**{MODEL}-v1.0.0-q8_0**" in pull["body"]
    assert "+    version: 1.0.0" in pull["body"]
    assert git(scratch.remote, "rev-parse", f"deploy/staging/{MODEL}-1.0.0")


def test_pr_that_already_exists_is_reported_not_duplicated(
        scratch: Scratch, fake_github: FakeGitHub) -> None:
    branch = f"deploy/staging/{MODEL}-1.0.0"
    fake_github.pulls.append({"number": 7, "state": "open", "title": "t", "body": "",
                              "head": {"ref": branch}, "base": {"ref": "main"},
                              "html_url": "https://github.test/acme/models/pull/7"})
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--pr")
    assert result.exit_code == 0, result.output + result.stderr
    assert "pull request #7 already open: https://github.test/acme/models/pull/7" in \
        result.output
    assert len(fake_github.pulls) == 1
    assert [m for m, _, _ in fake_github.requests] == ["POST", "GET"]


def test_pr_with_a_bad_token_says_so(scratch: Scratch, fake_github: FakeGitHub,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "wrong")
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--pr")
    assert result.exit_code == 1
    assert "GitHub rejected the token (401: Bad credentials)" in result.stderr
    assert f"POST {fake_github.url}/repos/acme/models/pulls" in result.stderr
    assert "set GITHUB_TOKEN to a valid token" in result.stderr
    assert fake_github.pulls == []


def test_pr_without_a_token_prints_the_compare_url(
        scratch: Scratch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.delenv("GH_TOKEN", raising=False)
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--pr")
    assert result.exit_code == 0, result.output + result.stderr
    assert (f"open the pull request: https://github.com/acme/models/compare/main..."
            f"deploy/staging/{MODEL}-1.0.0?expand=1") in result.output


def test_direct_and_pr_together_is_a_usage_error(scratch: Scratch) -> None:
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--direct",
                 "--pr")
    assert result.exit_code == 2
    assert "drop --pr or --direct" in result.stderr


def test_python_api_plan_then_apply(scratch: Scratch) -> None:
    plan = deploy.plan_deploy(scratch.root, VersionRef(MODEL, "1.0.0"), "staging")
    assert plan.from_version is None and plan.to_version == "1.0.0"
    landing = deploy.apply_deploy(scratch.root, plan)
    assert landing.branch == plan.branch
    assert git(scratch.root, "rev-parse", plan.branch) == landing.commit


# --- canaries ----------------------------------------------------------------------------

@pytest.fixture
def staged(scratch: Scratch) -> Scratch:
    """production runs MODEL 1.0.0 and OTHER 1.0.0; staging runs MODEL 2.0.0."""
    ship(scratch.root, f"{MODEL}@1.0.0")
    ship(scratch.root, f"{OTHER}@1.0.0")
    ship(scratch.root, f"{MODEL}@2.0.0", "staging")
    return scratch


def test_canary_deploy_makes_one_commit_changing_one_entry(staged: Scratch) -> None:
    s = staged
    main_before = s.head()
    before = s.env_text("production")

    result = cli(s.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary", "10")

    assert result.exit_code == 0, result.output + result.stderr
    branch = f"deploy/production/{MODEL}-2.0.0-canary-10"
    assert git(s.root, "rev-list", "--count", f"main..{branch}") == "1"
    assert git(s.root, "rev-parse", f"{branch}^") == main_before
    assert git(s.root, "diff", "--name-only", f"{branch}^", branch) == \
        "environments/production.yaml"
    after = s.env_text("production", branch)
    old, new = yaml.safe_load(before)["models"], yaml.safe_load(after)["models"]
    assert new == {**old, MODEL: {"version": "1.0.0",
                                  "canary": {"version": "2.0.0", "weight": 10}}}
    assert comment_lines(after) == comment_lines(before)
    assert git(s.root, "diff", "--numstat", f"{branch}^", branch).split()[:2] == ["3", "0"]
    assert git(s.root, "log", "-1", "--format=%B", branch) == (
        f"deploy(production): {MODEL} canary 2.0.0 (10%)\n\n"
        f"Environment: production\nModel: {MODEL}\nFrom-Version: 1.0.0\nTo-Version: 1.0.0\n"
        "Canary-Version: 2.0.0\nCanary-Weight: 10")
    assert s.head() == main_before
    assert git(s.root, "status", "--porcelain") == ""


def test_canary_dry_run_json(staged: Scratch) -> None:
    result = cli(staged.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary",
                 "5", "--dry-run", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    plan = json.loads(result.output)
    assert (plan["from"], plan["to"], plan["canary"], plan["from_canary"]) == (
        "1.0.0", "1.0.0", {"version": "2.0.0", "weight": 5}, None)
    assert plan["branch"] == f"deploy/production/{MODEL}-2.0.0-canary-5"
    assert "+    canary:\n+      version: 2.0.0\n+      weight: 5\n" in plan["diff"]


def test_ramp_changes_only_the_weight(staged: Scratch) -> None:
    s = staged
    ship_canary(s.root, f"{MODEL}@2.0.0", "production", 10)
    result = cli(s.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary", "50",
                 "--direct", "--push")
    assert result.exit_code == 0, result.output + result.stderr
    diff = git(s.root, "diff", "HEAD^", "HEAD", "--", "environments/production.yaml")
    assert [line for line in diff.splitlines()[4:] if line[:1] in "+-"] == [
        "-      weight: 10", "+      weight: 50"]
    assert git(s.root, "diff", "--numstat", "HEAD^", "HEAD").split()[:2] == ["1", "1"]
    assert git(s.root, "log", "-1", "--format=%s") == \
        f"deploy(production): {MODEL} canary 2.0.0 (50%)"
    assert s.canaries("production") == {MODEL: {"version": "2.0.0", "weight": 50}}
    assert s.running("production") == {MODEL: "1.0.0", OTHER: "1.0.0"}
    assert s.remote_head() == s.head()


def test_canary_of_a_model_without_a_primary_version_is_refused(scratch: Scratch) -> None:
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--canary", "10")
    assert result.exit_code == 1
    assert f"staging runs no version of {MODEL}" in result.stderr
    assert "cannot get a canary: deploy it first" in result.stderr
    assert git(scratch.root, "branch", "--list", "deploy/*") == ""


def test_same_canary_and_weight_is_refused(staged: Scratch) -> None:
    ship_canary(staged.root, f"{MODEL}@2.0.0", "production", 10)
    result = cli(staged.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary",
                 "10")
    assert result.exit_code == 1
    assert f"production already runs {MODEL}@2.0.0 as a canary at 10%" in result.stderr


def test_canary_of_the_primary_version_is_refused(staged: Scratch) -> None:
    result = cli(staged.root, "deploy", f"{MODEL}@1.0.0", "--env", "production", "--canary",
                 "10")
    assert result.exit_code == 1
    assert f"production already runs {MODEL}@1.0.0 as its primary version" in result.stderr


def test_canary_must_follow_the_promotion_order(staged: Scratch) -> None:
    result = cli(staged.root, "deploy", f"{MODEL}@2.1.0", "--env", "production", "--canary",
                 "10")
    assert result.exit_code == 1
    assert f"{MODEL}@2.1.0 cannot enter production as a canary: it does not run in " \
        "staging" in result.stderr
    assert "deploy it to staging first" in result.stderr


@pytest.mark.parametrize("weight", ["0", "100"])
def test_canary_weight_is_1_to_99(staged: Scratch, weight: str) -> None:
    result = cli(staged.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary",
                 weight)
    assert result.exit_code == 2
    with pytest.raises(Exception, match="weight is a percent"):
        deploy.plan_deploy(staged.root, VersionRef(MODEL, "2.0.0"), "production",
                           canary=int(weight))


def test_plain_deploy_of_the_canary_version_promotes_it(staged: Scratch) -> None:
    s = staged
    ship_canary(s.root, f"{MODEL}@2.0.0", "production", 10)
    result = cli(s.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--direct")
    assert result.exit_code == 0, result.output + result.stderr
    assert s.canaries("production") == {}
    assert yaml.safe_load(s.env_text("production"))["models"][MODEL] == {"version": "2.0.0"}
    assert git(s.root, "log", "-1", "--format=%s") == \
        f"deploy(production): {MODEL} 1.0.0 -> 2.0.0"
