"""The GitHub Actions workflows: they lint clean, and their `run:` steps work when run.

Each workflow is run step by step (testing.workflows.run_workflow) the way a runner would
for a pull_request or workflow_dispatch event, against a scratch registry whose remote is
a local bare repository and whose artifacts are in a real S3 (SeaweedFS). Only the
install step is skipped (the test's venv already has ggufops; installing needs the
network), and three actions are stood in for: checkout clones the bare remote at the
event's commit; setup-python and cache are provided by the test's own interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ggufops.artifacts import s3config
from testing.fakegithub import FakeGitHub
from testing.repos import git, git_commit, make_remote
from testing.scratch import MODEL, OTHER, ScratchS3, cli, ship
from testing.workflows import (
    Event,
    Expression,
    WorkflowRun,
    load_workflow,
    open_pull_request,
    run_workflow,
    substitute,
)

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
SKIP_INSTALL = {"install": "the test's venv already has ggufops installed (pip needs the "
                           "network)"}


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


# --- lint ---------------------------------------------------------------------------------

def test_the_three_workflows_exist() -> None:
    assert [p.name for p in workflow_files()] == ["gate.yml", "rollback.yml", "validate.yml"]


def test_actionlint_is_clean() -> None:
    proc = subprocess.run([str(BIN / "actionlint"), "-no-color",
                           *map(str, workflow_files())], capture_output=True, text=True,
                          check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_match_github_s_schema() -> None:
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                           "vendor.github-workflows", *map(str, workflow_files())],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- what they promise, read from the files ------------------------------------------------

@pytest.mark.parametrize(("name", "permissions"), [
    ("validate.yml", {"contents": "read"}),
    ("gate.yml", {"contents": "read", "pull-requests": "write"}),
    ("rollback.yml", {"contents": "write"}),
])
def test_least_privilege_permissions(name: str, permissions: dict[str, str]) -> None:
    workflow = load_workflow(WORKFLOWS / name)
    assert workflow["permissions"] == permissions
    assert all("permissions" not in job for job in workflow["jobs"].values())


def test_rollback_runs_one_at_a_time_per_environment_behind_its_protection_rules() -> None:
    workflow = load_workflow(WORKFLOWS / "rollback.yml")
    assert workflow["concurrency"] == {
        "group": "ggufops-environment-${{ inputs.environment }}", "cancel-in-progress": False}
    assert set(workflow["on"]["workflow_dispatch"]["inputs"]) == {"environment", "model", "to",
                                                                 "reason"}
    assert workflow["jobs"]["rollback"]["environment"] == "${{ inputs.environment }}"


def test_concurrency_groups_resolve_per_pull_request_and_per_environment() -> None:
    ok = {"failed": False}
    pr = {"github": {"event": {"pull_request": {"number": 7}}}}
    dispatch = {"inputs": {"environment": "staging"}}
    groups = {p.name: load_workflow(p)["concurrency"]["group"] for p in workflow_files()}
    assert substitute(groups["validate.yml"], pr, ok) == "validate-pr-7"
    assert substitute(groups["gate.yml"], pr, ok) == "gate-pr-7"
    assert substitute(groups["rollback.yml"], dispatch, ok) == "ggufops-environment-staging"


def test_pull_request_triggers() -> None:
    assert load_workflow(WORKFLOWS / "validate.yml")["on"] == {"pull_request": None}
    assert load_workflow(WORKFLOWS / "gate.yml")["on"] == {
        "pull_request": {"paths": ["environments/**", "registry/**", "pyproject.toml"]}}


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_nothing_hard_coded_and_every_step_calls_the_cli(path: Path) -> None:
    text = path.read_text()
    workflow = load_workflow(path)
    for marker in ("127.0.0.1", "localhost", "AKIA", "amazonaws.com", "8333"):
        assert marker not in text
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    uses = {s["uses"].split("@")[0] for s in steps if "uses" in s}
    assert uses <= {"actions/checkout", "actions/setup-python", "actions/cache"}
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip"
    if "llama-cpp-python" in text:  # a job that builds llama.cpp caches the wheel
        caches = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/cache")]
        assert "~/.cache/ggufops-wheels" in caches
    secrets_used = {s for s in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                    if f"${{{{ secrets.{s} }}}}" in text}
    assert secrets_used == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # inputs and event data reach scripts through env:, never spliced into the script
    for step in steps:
        assert "${{" not in step.get("run", ""), step.get("name")


# --- the expression substituter the runner uses --------------------------------------------

def test_expressions() -> None:
    contexts: dict[str, Any] = {
        "inputs": {"environment": "production", "to": ""},
        "secrets": {"TOKEN": "s3cret"},
        "vars": {},
        "github": {"repository": "Acme/Models", "token": "gh",
                   "event": {"pull_request": {"head": {"repo": {"full_name": "acme/models"}}}}},
    }
    ok, failed = {"failed": False}, {"failed": True}

    def ev(text: str, status: dict[str, bool] = ok) -> Any:
        return Expression(text).evaluate(contexts, status)

    assert ev("inputs.environment") == "production"
    assert ev("vars.S3_ENDPOINT_URL || secrets.TOKEN") == "s3cret"
    assert ev("secrets.MISSING || github.token") == "gh"
    assert ev("github.event.pull_request.head.repo.full_name == github.repository") is True
    assert ev("inputs['environment'] != 'staging' && 'yes'") == "yes"
    assert ev("!cancelled() && inputs.to") == ""
    assert ev("always()", failed) is True and ev("success()", failed) is False
    assert substitute("group-${{ inputs.environment }}-${{ inputs.to }}", contexts, ok) == \
        "group-production-"
    with pytest.raises(Exception, match="not supported"):
        ev("hashFiles('pyproject.toml')")


# --- running them -----------------------------------------------------------------------------

def s3_settings(scratch: ScratchS3) -> tuple[dict[str, str], dict[str, str]]:
    """(vars, secrets) a repository would configure for this S3 remote."""
    settings = s3config.resolve(scratch.root)
    return ({"S3_ENDPOINT_URL": settings.endpoint_url or "", "S3_URL": settings.url},
            {"AWS_ACCESS_KEY_ID": settings.access_key_id or "",
             "AWS_SECRET_ACCESS_KEY": settings.secret_access_key or "",
             "GITHUB_TOKEN": "ghp_test_token"})


def assert_step_kinds(run: WorkflowRun, expected_failure: str | None = None) -> None:
    kinds = {s.name: s.status for s in run.steps}
    assert kinds["actions/checkout@v5"] == "emulated"
    assert kinds["Install ggufops"] == "skipped"
    ran = [s for s in run.steps if s.status in ("success", "failure")]
    assert ran, run.log()
    failures = [s.name for s in run.steps if s.status == "failure"]
    assert failures == ([expected_failure] if expected_failure else []), run.log()


@pytest.fixture
def deploy_pr(scratch_s3: ScratchS3) -> ScratchS3:
    """production runs MODEL 2.0.0; PR #1 deploys 2.1.0 (branch pushed, merge ref made)."""
    s = scratch_s3
    ship(s.root, f"{MODEL}@2.0.0")
    ship(s.root, f"{MODEL}@2.1.0", "staging")
    assert cli(s.root, "deploy", f"{MODEL}@2.1.0", "--env", "production", "--push").exit_code == 0
    open_pull_request(s.remote, s.tmp, f"deploy/production/{MODEL}-2.1.0", 1)
    return s


def pr_event(s: ScratchS3, head: str, number: int = 1) -> Event:
    variables, secrets = s3_settings(s)
    return Event("pull_request", s.remote, base_ref="main", head_ref=head, pr_number=number,
                 vars=variables, secrets=secrets)


def test_validate_workflow_passes_a_good_deploy_pr(deploy_pr: ScratchS3, tmp_path: Path) -> None:
    event = pr_event(deploy_pr, f"deploy/production/{MODEL}-2.1.0")
    run = run_workflow(WORKFLOWS / "validate.yml", event, tmp_path / "run",
                       skip_ids=SKIP_INSTALL)
    assert_step_kinds(run)
    assert run.step("Validate against the base branch").stdout.startswith("ok: ")
    local = (run.workspace / ".dvc" / "config.local").read_text()
    assert deploy_pr.s3.endpoint in local and deploy_pr.prefix in local
    assert git(run.workspace, "status", "--porcelain") == ""  # config.local is ignored


def test_validate_workflow_fails_a_pr_whose_artifact_is_missing(
        deploy_pr: ScratchS3, tmp_path: Path) -> None:
    deploy_pr.delete(MODEL, "2.1.0")
    event = pr_event(deploy_pr, f"deploy/production/{MODEL}-2.1.0")
    run = run_workflow(WORKFLOWS / "validate.yml", event, tmp_path / "run",
                       skip_ids=SKIP_INSTALL)
    assert_step_kinds(run, "Validate against the base branch")
    out = run.step("Validate against the base branch").stdout
    assert f"artifact of {MODEL}@2.1.0 is missing from the remote" in out


def test_validate_workflow_fails_when_s3_is_not_configured(
        deploy_pr: ScratchS3, tmp_path: Path) -> None:
    event = pr_event(deploy_pr, f"deploy/production/{MODEL}-2.1.0")
    event.vars = {}
    run = run_workflow(WORKFLOWS / "validate.yml", event, tmp_path / "run",
                       skip_ids=SKIP_INSTALL)
    assert_step_kinds(run, "Point the DVC remote at the S3 endpoint")
    assert "set the repository variable (or secret) S3_ENDPOINT_URL" in \
        run.step("Point the DVC remote at the S3 endpoint").stdout
    assert run.step("Validate against the base branch").status == "not-run"


def test_rollback_workflow_dispatch_pushes_the_rollback(
        scratch_s3: ScratchS3, tmp_path: Path) -> None:
    s = scratch_s3
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{OTHER}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0")
    deployed = s.remote_head()
    variables, secrets = s3_settings(s)
    event = Event("workflow_dispatch", s.remote, vars=variables, secrets=secrets,
                  inputs={"environment": "production", "model": MODEL, "to": "",
                          "reason": "answers got worse"})

    run = run_workflow(WORKFLOWS / "rollback.yml", event, tmp_path / "run",
                       skip_ids=SKIP_INSTALL)

    assert_step_kinds(run)
    assert s.running("production", where=s.remote) == {MODEL: "1.0.0", OTHER: "1.0.0"}
    head = s.remote_head()
    assert git(s.remote, "rev-parse", "main^") == deployed
    assert git(s.remote, "log", "-1", "--format=%an <%ae>") == \
        "octo-operator <4242+octo-operator@users.noreply.github.com>"
    trailers = git(s.remote, "log", "-1", "--format=%(trailers:only,unfold)")
    assert f"Rollback-Of: {deployed}\nReason: answers got worse\n" in trailers + "\n"
    result = json.loads((run.workspace / "rollback.json").read_text())
    assert result["result"]["commit"] == head
    assert run.summary.startswith("### Rollback of production\n")


def test_rollback_workflow_with_to(scratch_s3: ScratchS3, tmp_path: Path) -> None:
    s = scratch_s3
    for version in ("1.0.0", "2.0.0", "2.1.0"):
        ship(s.root, f"{MODEL}@{version}")
    variables, secrets = s3_settings(s)
    event = Event("workflow_dispatch", s.remote, vars=variables, secrets=secrets,
                  inputs={"environment": "production", "model": "", "to": "1.0.0",
                          "reason": "back to the known good one"})
    run = run_workflow(WORKFLOWS / "rollback.yml", event, tmp_path / "run",
                       skip_ids=SKIP_INSTALL)
    assert_step_kinds(run)
    assert s.running("production", where=s.remote) == {MODEL: "1.0.0"}


# --- the gate workflow: real llama.cpp gates on toy models, the PR comment on the fake ------

@pytest.fixture
def toy_pr(toy_registry: Path, toy_models: dict[str, Path], tmp_path: Path) -> ScratchS3:
    """toy@1.0.0 in production; PR #1 deploys toy@1.1.0 (the improved toy model)."""
    from testing.toys import register_toy

    root = toy_registry
    register_toy(root, toy_models["improved"], "toy", "1.1.0", parent="1.0.0")
    git_commit(root, "register toy@1.1.0")
    remote = make_remote(tmp_path, root)
    git(root, "branch", "-q", "--set-upstream-to=origin/main", "main")
    ship(root, "toy@1.1.0", "staging")
    assert cli(root, "deploy", "toy@1.1.0", "--env", "production", "--push").exit_code == 0
    open_pull_request(remote, tmp_path, "deploy/production/toy-1.1.0", 1)
    settings = s3config.resolve(root)
    return ScratchS3(root, remote, tmp_path, settings, "")


def test_gate_workflow_reports_in_the_summary_and_one_updated_comment(toy_pr: ScratchS3,
                                                                      fake_github: FakeGitHub,
                                                                      tmp_path: Path) -> None:
    settings = toy_pr.s3
    event = Event("pull_request", toy_pr.remote, base_ref="main",
                  head_ref="deploy/production/toy-1.1.0", pr_number=1,
                  vars={"S3_ENDPOINT_URL": settings.endpoint_url, "S3_URL": settings.url},
                  secrets={"AWS_ACCESS_KEY_ID": settings.access_key_id,
                           "AWS_SECRET_ACCESS_KEY": settings.secret_access_key,
                           "GITHUB_TOKEN": fake_github.token})
    api = {"GITHUB_API_URL": fake_github.url}

    first = run_workflow(WORKFLOWS / "gate.yml", event, tmp_path / "run1",
                         skip_ids=SKIP_INSTALL, extra_env=api)
    second = run_workflow(WORKFLOWS / "gate.yml", event, tmp_path / "run2",
                          skip_ids=SKIP_INSTALL, extra_env=api)

    for run in (first, second):
        assert_step_kinds(run)
        assert run.summary.startswith("## ✅ ggufops gate passed"), run.log()
        report = json.loads((run.workspace / "gate.json").read_text())
        assert report["passed"] is True
        assert report["gates"][0]["candidate"] == "toy@1.1.0"
    assert first.step("Post the report on the pull request").stdout.startswith(
        "created comment 1000 on acme/models#1")
    assert second.step("Post the report on the pull request").stdout.startswith(
        "updated comment 1000 on acme/models#1")
    [comment] = fake_github.comments.values()
    assert comment["issue"] == 1
    assert comment["body"].startswith("<!-- ggufops-gate -->\n## ✅ ggufops gate passed")


def test_gate_workflow_does_not_comment_for_a_fork(toy_pr: ScratchS3, fake_github: FakeGitHub,
                                                   tmp_path: Path) -> None:
    settings = toy_pr.s3
    event = Event("pull_request", toy_pr.remote, base_ref="main",
                  head_ref="deploy/production/toy-1.1.0", pr_number=1,
                  repository="acme/models",
                  vars={"S3_ENDPOINT_URL": settings.endpoint_url, "S3_URL": settings.url},
                  secrets={"AWS_ACCESS_KEY_ID": settings.access_key_id,
                           "AWS_SECRET_ACCESS_KEY": settings.secret_access_key})
    payload = event.payload()
    payload["pull_request"]["head"]["repo"]["full_name"] = "stranger/models"
    event.payload = lambda: payload  # type: ignore[method-assign]
    run = run_workflow(WORKFLOWS / "gate.yml", event, tmp_path / "run", skip_ids=SKIP_INSTALL,
                       extra_env={"GITHUB_API_URL": fake_github.url})
    assert run.step("Post the report on the pull request").status == "not-run"
    assert run.step("Add the report to the job summary").status == "success"
    assert fake_github.requests == []


def test_workflow_yaml_is_plain_yaml() -> None:
    for path in workflow_files():
        assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_gate_workflow_installs_the_base_branch_s_ggufops() -> None:
    steps = load_workflow(WORKFLOWS / "gate.yml")["jobs"]["gate"]["steps"]
    names = [s.get("name") or s["uses"] for s in steps]
    base = names.index("Check out the base branch's ggufops, apart from the pull request's "
                       "files")
    install = next(s for s in steps if s.get("id") == "install")
    assert base < names.index("Install ggufops")
    assert install["env"] == {"TOOL": "${{ steps.base-tool.outputs.path }}"}
    assert install["run"].rstrip().endswith(
        'python -m pip install --find-links "$wheels" "$TOOL[gate]"')
    assert 'os.path.join(os.environ["TOOL"], "pyproject.toml")' in install["run"]  # its pin
    assert "-e ." not in install["run"].split()


@pytest.fixture
def lower_bar_pr(toy_registry: Path, toy_models: dict[str, Path], tmp_path: Path) -> ScratchS3:
    """PR #2 raises max_degradation to 90% AND deploys toy@1.2.0 (the degraded toy)."""
    from testing.toys import register_toy

    root = toy_registry
    remote = make_remote(tmp_path, root)
    git(root, "checkout", "-q", "-b", "lower-the-bar")
    register_toy(root, toy_models["degraded"], "toy", "1.2.0", parent="1.0.0")
    policy_file = root / "registry" / "policy.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    policy["gates"]["default"]["max_degradation"] = 0.9
    policy_file.write_text(yaml.safe_dump(policy, sort_keys=False))
    (root / "environments" / "production.yaml").write_text(
        "environment: production\nmodels:\n  toy:\n    version: 1.2.0\n")
    git_commit(root, "deploy toy 1.2.0 with a looser gate")
    git(root, "push", "-q", "origin", "lower-the-bar")
    open_pull_request(remote, tmp_path, "lower-the-bar", 2)
    return ScratchS3(root, remote, tmp_path, s3config.resolve(root), "")


def test_gate_workflow_judges_with_the_base_s_policy(lower_bar_pr: ScratchS3,
                                                     fake_github: FakeGitHub,
                                                     tmp_path: Path) -> None:
    settings = lower_bar_pr.s3
    event = Event("pull_request", lower_bar_pr.remote, base_ref="main",
                  head_ref="lower-the-bar", pr_number=2,
                  vars={"S3_ENDPOINT_URL": settings.endpoint_url, "S3_URL": settings.url},
                  secrets={"AWS_ACCESS_KEY_ID": settings.access_key_id,
                           "AWS_SECRET_ACCESS_KEY": settings.secret_access_key,
                           "GITHUB_TOKEN": fake_github.token})
    run = run_workflow(WORKFLOWS / "gate.yml", event, tmp_path / "run", skip_ids=SKIP_INSTALL,
                       extra_env={"GITHUB_API_URL": fake_github.url})
    assert_step_kinds(run, "Run the llama.cpp gates")
    tool = tmp_path / "run" / "runner-temp" / "ggufops-base"
    assert git(tool, "rev-parse", "HEAD") == git(lower_bar_pr.remote, "rev-parse", "main")
    assert "max_degradation: 0.05" in (tool / "registry" / "policy.yaml").read_text()
    assert "the gate runs ggufops from " in run.step(
        "Check out the base branch's ggufops, apart from the pull request's files").stdout
    assert "error: gate failed: toy@1.2.0 in production: perplexity " in \
        run.step("Run the llama.cpp gates").stderr
    assert run.summary.startswith("## ❌ ggufops gate FAILED")
    assert "### ⚠️ Policy change not applied to itself" in run.summary
    assert "| `gates.default.max_degradation` | `0.05` | `0.9` |" in run.summary
    report = json.loads((run.workspace / "gate.json").read_text())
    assert report["self_changes"]["policy_changed"] is True
    [comment] = fake_github.comments.values()
    assert "### ⚠️ Policy change not applied to itself" in comment["body"]
