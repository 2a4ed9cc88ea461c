"""Lifecycle (issue 14.1): deprecate, archive, restore without touching a version file.

Real git: a scratch registry with a bare remote; every change goes through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ggufops.registry import lifecycle
from ggufops.registry.validate import Problem, validate_repo
from testing.fakegithub import FakeGitHub
from testing.repos import git, git_commit, line_of
from testing.scratch import MODEL, OTHER, Scratch, cli, ship

LIFECYCLE = f"registry/{MODEL}/lifecycle.yaml"


def run_ok(root: Path, *args: str) -> str:
    result = cli(root, *args)
    assert result.exit_code == 0, result.output + result.stderr
    return result.output


def events(scratch: Scratch, ref: str = "main") -> list[dict[str, str]]:
    data = yaml.safe_load(git(scratch.root, "show", f"{ref}:{LIFECYCLE}"))
    assert data["model"] == MODEL
    return [{k: v for k, v in e.items() if k in ("version", "status", "reason")}
            for e in data["events"]]


def deprecate(root: Path, version: str, reason: str = "wrong language") -> str:
    return run_ok(root, "deprecate", f"{MODEL}@{version}", "--reason", reason, "--direct",
                  "--push")


def set_policy(scratch: Scratch, rule: str) -> None:
    path = scratch.root / "registry" / "policy.yaml"
    path.write_text(path.read_text().replace("deprecated: warn", f"deprecated: {rule}"))
    git_commit(scratch.root, f"policy: deprecated {rule}")
    git(scratch.root, "push", "-q", "origin", "main")


def stage_of(root: Path, version: str, model: str = MODEL) -> str:
    rows = json.loads(run_ok(root, "list", "--json"))
    [row] = [r for r in rows if r["name"] == model and r["version"] == version]
    stage: str = row["stage"]
    return stage


# --- the file and the commands ---------------------------------------------------------------

def test_deprecate_appends_an_entry_and_leaves_the_version_file_alone(scratch: Scratch) -> None:
    version_file = scratch.root / "registry" / MODEL / "1.0.0.yaml"
    before = version_file.read_bytes()
    first = deprecate(scratch.root, "1.0.0", "answers in the wrong language")
    assert "deprecate(llama3-instruct): 1.0.0" in first
    text_after_first = git(scratch.root, "show", f"main:{LIFECYCLE}")
    deprecate(scratch.root, "2.0.0", "superseded by 2.1.0")

    assert events(scratch) == [
        {"version": "1.0.0", "status": "deprecated", "reason": "answers in the wrong language"},
        {"version": "2.0.0", "status": "deprecated", "reason": "superseded by 2.1.0"}]
    # append-only: the second change kept every byte of the first
    assert git(scratch.root, "show", f"main:{LIFECYCLE}").startswith(text_after_first)
    assert version_file.read_bytes() == before
    assert git(scratch.root, "diff", "--name-only", "main~1", "main") == LIFECYCLE
    assert git(scratch.root, "log", "-1", "--format=%B", "main") == (
        f"deprecate({MODEL}): 2.0.0\n\nReason: superseded by 2.1.0\nModel: {MODEL}\n"
        "Version: 2.0.0\nLifecycle: deprecated")
    assert scratch.remote_head() == scratch.head()
    assert validate_repo(scratch.root, base="HEAD~2") == []


def test_without_direct_the_change_goes_on_its_own_branch(scratch: Scratch) -> None:
    main_before = scratch.head()
    run_ok(scratch.root, "deprecate", f"{MODEL}@1.0.0", "--reason", "old")
    branch = f"lifecycle/{MODEL}-1.0.0-deprecate"
    assert scratch.head() == main_before
    assert git(scratch.root, "rev-parse", f"{branch}^") == main_before
    assert git(scratch.root, "status", "--porcelain") == ""


def test_pr_opens_a_pull_request(scratch: Scratch, fake_github: FakeGitHub) -> None:
    out = run_ok(scratch.root, "archive", f"{MODEL}@1.0.0", "--pr")
    assert "pull request #1 opened" in out
    [pull] = fake_github.pulls
    assert pull["head"] == {"ref": f"lifecycle/{MODEL}-1.0.0-archive"}
    assert pull["title"] == f"archive({MODEL}): 1.0.0"
    assert f"**{MODEL}-v1.0.0-q8_0** as **archived**" in pull["body"]
    assert git(scratch.remote, "rev-parse", f"lifecycle/{MODEL}-1.0.0-archive")


def test_deprecate_needs_a_reason_and_a_registered_version(scratch: Scratch) -> None:
    missing = cli(scratch.root, "deprecate", f"{MODEL}@1.0.0", "--reason", "  ", "--direct")
    assert missing.exit_code == 2
    assert "deprecate needs --reason TEXT" in missing.stderr
    unknown = cli(scratch.root, "deprecate", f"{MODEL}@9.9.9", "--reason", "x", "--direct")
    assert unknown.exit_code == 1
    assert f"{MODEL}@9.9.9 is not registered" in unknown.stderr


def test_illegal_moves_are_refused(scratch: Scratch) -> None:
    restore = cli(scratch.root, "restore", f"{MODEL}@1.0.0", "--direct")
    assert restore.exit_code == 1
    assert "neither archived nor deprecated; there is nothing to restore" in restore.stderr
    deprecate(scratch.root, "1.0.0")
    again = cli(scratch.root, "deprecate", f"{MODEL}@1.0.0", "--reason", "x", "--direct")
    assert again.exit_code == 1
    assert f"cannot deprecate {MODEL}@1.0.0: {MODEL}@1.0.0 is already deprecated" in again.stderr


def test_archive_is_refused_while_an_environment_runs_it(scratch: Scratch) -> None:
    ship(scratch.root, f"{MODEL}@1.0.0")
    result = cli(scratch.root, "archive", f"{MODEL}@1.0.0", "--direct")
    assert result.exit_code == 1
    assert f"cannot archive {MODEL}@1.0.0: production runs it" in result.stderr
    assert not (scratch.root / LIFECYCLE).exists()


# --- what the stages forbid ------------------------------------------------------------------

def test_deploying_a_deprecated_version_warns_by_default(scratch: Scratch) -> None:
    deprecate(scratch.root, "1.0.0", "leaks the system prompt")
    result = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging")
    assert result.exit_code == 0, result.output + result.stderr
    assert (f"warning: {MODEL}@1.0.0 is deprecated (leaks the system prompt) and enters "
            "staging") in result.output
    # the same verdict from validate on the deploy branch (what CI runs on its PR)
    git(scratch.root, "switch", "-q", f"deploy/staging/{MODEL}-1.0.0")
    warnings: list[Problem] = []
    assert validate_repo(scratch.root, base="main", warnings=warnings) == []
    assert [(w.file, w.code) for w in warnings] == [
        ("environments/staging.yaml", "lifecycle-warning")]


def test_policy_block_refuses_a_deprecated_deploy_in_deploy_and_in_validate(
        scratch: Scratch) -> None:
    ship(scratch.root, f"{MODEL}@1.0.0", "staging")
    deprecate(scratch.root, "1.0.0")
    set_policy(scratch, "block")
    refused = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "production")
    assert refused.exit_code == 1
    assert (f"{MODEL}@1.0.0 is deprecated (wrong language) and enters production; deploy a "
            "newer version") in refused.stderr
    assert "(policy lifecycle.deprecated: block)" in refused.stderr
    # a hand-made PR doing the same fails validate, at the line of the version
    git(scratch.root, "switch", "-q", "-c", "by-hand")
    env_file = scratch.root / "environments" / "production.yaml"
    env_file.write_text(env_file.read_text().replace(
        "models: {}", f"models:\n  {MODEL}:\n    version: 1.0.0"))
    git_commit(scratch.root, "by hand")
    problems = validate_repo(scratch.root, base="main")
    line = line_of(env_file, lambda text: text.startswith("    version: 1.0.0"))
    assert [(p.file, p.line, p.code) for p in problems] == [
        ("environments/production.yaml", line, "lifecycle")]
    # a version that already ran there before the deprecation is not "entering"
    assert validate_repo(scratch.root, base="HEAD") == []


def test_archived_version_cannot_be_deployed_or_rolled_back_to(scratch: Scratch) -> None:
    ship(scratch.root, f"{MODEL}@1.0.0")
    ship(scratch.root, f"{MODEL}@2.0.0")
    run_ok(scratch.root, "archive", f"{MODEL}@1.0.0", "--direct", "--push")
    rollback = cli(scratch.root, "rollback", "--env", "production", "--skip-artifact-check")
    assert rollback.exit_code == 1
    assert (f"{MODEL}@1.0.0 is archived ({LIFECYCLE}), so it cannot be rolled back to in "
            f"production: restore it first (`ggufops restore {MODEL}@1.0.0`, then merge that "
            "change)") in rollback.stderr
    to = cli(scratch.root, "rollback", "--env", "production", "--to", "1.0.0")
    assert to.exit_code == 1 and "ggufops restore" in to.stderr
    deploy = cli(scratch.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging")
    assert deploy.exit_code == 1
    assert "is archived" in deploy.stderr and "cannot be deployed to staging" in deploy.stderr

    run_ok(scratch.root, "restore", f"{MODEL}@1.0.0", "--direct", "--push")
    again = cli(scratch.root, "rollback", "--env", "production", "--skip-artifact-check")
    assert again.exit_code == 0, again.output + again.stderr
    assert scratch.running("production") == {MODEL: "1.0.0"}


def test_validate_flags_an_environment_running_an_archived_version(scratch: Scratch) -> None:
    run_ok(scratch.root, "archive", f"{MODEL}@1.0.0", "--direct")
    env_file = scratch.root / "environments" / "staging.yaml"
    env_file.write_text(env_file.read_text().replace(
        "models: {}", f"models:\n  {MODEL}:\n    version: 2.0.0\n"
        "    canary: {version: 1.0.0, weight: 5}"))
    [problem] = validate_repo(scratch.root)
    assert problem.file == "environments/staging.yaml" and problem.line == 7  # the canary
    assert problem.message.startswith(f"{MODEL}@1.0.0 is archived")
    assert f"`ggufops restore {MODEL}@1.0.0`" in problem.message


# --- restore ---------------------------------------------------------------------------------

def test_restore_undoes_archive_first_then_deprecation(scratch: Scratch) -> None:
    deprecate(scratch.root, "1.0.0")
    run_ok(scratch.root, "archive", f"{MODEL}@1.0.0", "--direct")
    assert stage_of(scratch.root, "1.0.0") == lifecycle.ARCHIVED
    run_ok(scratch.root, "restore", f"{MODEL}@1.0.0", "--direct")
    assert stage_of(scratch.root, "1.0.0") == lifecycle.DEPRECATED
    run_ok(scratch.root, "restore", f"{MODEL}@1.0.0", "--direct")
    assert stage_of(scratch.root, "1.0.0") == lifecycle.DEVELOPMENT
    assert [e["status"] for e in events(scratch)] == [
        "deprecated", "archived", "restored", "restored"]


# --- validate: schema, references, append-only -------------------------------------------------

def write_lifecycle(scratch: Scratch, text: str) -> None:
    (scratch.root / LIFECYCLE).write_text(text)


def test_validate_names_the_field_of_a_bad_entry(scratch: Scratch) -> None:
    write_lifecycle(scratch, f"model: {MODEL}\nevents:\n"
                    "  - {version: 1.0.0, status: retired, at: '2026-11-30T00:00:00Z', by: me}\n")
    [problem] = validate_repo(scratch.root)
    assert str(problem) == (f"{LIFECYCLE}:3:22: events.0.status: 'retired' is not a status "
                            "change; use deprecated, archived or restored")


def test_validate_refuses_unregistered_versions_and_illegal_moves(scratch: Scratch) -> None:
    write_lifecycle(scratch, f"model: {MODEL}\nevents:\n"
                    "  - {version: 9.0.0, status: deprecated, at: '2026-11-30T00:00:00Z', by: me}\n"
                    "  - {version: 1.0.0, status: restored, at: '2026-11-30T00:00:00Z', by: me}\n")
    messages = [p.message for p in validate_repo(scratch.root)]
    assert messages == [
        f"events[0].version: {MODEL}@9.0.0 is not registered (no registry/{MODEL}/9.0.0.yaml)",
        f"events[1].status: restored is not allowed here: {MODEL}@1.0.0 is neither archived nor "
        "deprecated; there is nothing to restore at that point"]


def test_validate_refuses_rewriting_or_deleting_earlier_entries(scratch: Scratch) -> None:
    deprecate(scratch.root, "1.0.0", "first reason")
    path = scratch.root / LIFECYCLE
    original = path.read_text()
    path.write_text(original.replace("first reason", "a nicer reason"))
    [problem] = validate_repo(scratch.root, base="main")
    assert problem.file == LIFECYCLE and problem.code == "lifecycle"
    assert problem.message.startswith("rewrote events[0] (1.0.0 deprecated at ")
    assert "which is append-only" in problem.message
    path.unlink()
    [deleted] = validate_repo(scratch.root, base="main")
    assert deleted.message.startswith(f"deleted {LIFECYCLE}, which is append-only")
    path.write_text(original)
    assert validate_repo(scratch.root, base="main") == []


# --- list, show, history ---------------------------------------------------------------------

def test_list_and_show_give_the_stage_and_its_history(scratch: Scratch) -> None:
    ship(scratch.root, f"{MODEL}@1.0.0")
    ship(scratch.root, f"{MODEL}@2.0.0", "staging")
    ship(scratch.root, f"{MODEL}@2.1.0")  # 2.0.0 leaves staging but stays a candidate
    deprecate(scratch.root, "1.0.0", "too slow")
    stages = {r["version"]: (r["stage"], r["status"])
              for r in json.loads(run_ok(scratch.root, "list", "--json")) if r["name"] == MODEL}
    assert stages == {"3.0.0": ("development", "registered"),
                      "2.1.0": ("production", "deployed"),
                      "2.0.0": ("candidate", "superseded"),
                      "1.0.0": ("deprecated", "superseded")}
    assert "STAGE" in run_ok(scratch.root, "list").splitlines()[0]
    shown = json.loads(run_ok(scratch.root, "show", f"{MODEL}@1.0.0", "--json"))
    assert shown["stage"] == "deprecated"
    assert shown["environments_ever"] == ["production", "staging"]
    [entry] = shown["lifecycle"]
    assert (entry["status"], entry["reason"]) == ("deprecated", "too slow")
    assert entry["by"] == "Test Author <author@example.invalid>"
    text = run_ok(scratch.root, "show", f"{MODEL}@1.0.0")
    assert "stage: deprecated" in text and "(too slow)" in text


def test_history_records_status_changes_as_kind_lifecycle(scratch: Scratch) -> None:
    ship(scratch.root, f"{MODEL}@1.0.0", "staging")
    deprecate(scratch.root, "1.0.0", "bad answers")
    ship(scratch.root, f"{OTHER}@1.0.0", "staging")
    rows = json.loads(run_ok(scratch.root, "history", "--env", "staging", "--json"))
    assert [(r["kind"], r["model"], r["to_version"], r["status"]) for r in rows] == [
        ("deploy", MODEL, "1.0.0", None),
        ("lifecycle", MODEL, "1.0.0", "deprecated"),
        ("deploy", OTHER, "1.0.0", None)]
    assert rows[1]["reason"] == "bad answers"
    table = run_ok(scratch.root, "history", "--env", "staging", "--model", MODEL)
    assert "lifecycle  llama3-instruct  1.0.0 deprecated" in table


@pytest.mark.parametrize("command", ["deprecate", "archive", "restore"])
def test_dry_run_changes_nothing(scratch: Scratch, command: str) -> None:
    if command == "restore":
        deprecate(scratch.root, "1.0.0")
    head = scratch.head()
    out = json.loads(run_ok(scratch.root, command, f"{MODEL}@1.0.0", "--reason", "r",
                            "--dry-run", "--json"))
    assert out["dry_run"] is True and out["file"] == LIFECYCLE
    assert scratch.head() == head
    assert git(scratch.root, "branch", "--list", "lifecycle/*") == ""
