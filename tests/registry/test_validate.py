"""`ggufops validate`: every bad input named in the foundation issue, against real git repos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ggufops.cli import main
from ggufops.registry.validate import promotion_allowed, validate_repo
from testing.repos import git_commit, set_environment, write_version


def run_validate(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--repo", str(root), "validate", *args])
    return result.exit_code, result.output


def messages(root: Path, base: str | None = None) -> list[str]:
    return [str(p) for p in validate_repo(root, base=base)]


def test_template_is_valid(registry_repo: Path) -> None:
    code, out = run_validate(registry_repo)
    assert code == 0, out
    assert "is valid" in out


def test_populated_registry_is_valid(registry_repo: Path) -> None:
    write_version(registry_repo, "llama3-instruct", "2.0.0")
    write_version(registry_repo, "llama3-instruct", "2.1.0", parent="2.0.0")
    set_environment(registry_repo, "staging", {"llama3-instruct": "2.1.0"})
    set_environment(registry_repo, "production", {"llama3-instruct": "2.0.0"})
    assert messages(registry_repo) == []


def test_malformed_yaml_names_line_and_column(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    path.write_text(path.read_text() + "broken: [1, 2\n")
    problems = validate_repo(registry_repo)
    assert len(problems) == 1
    assert problems[0].file == "registry/m/1.0.0.yaml"
    assert problems[0].code == "yaml"
    assert problems[0].line > 1


def test_list_instead_of_mapping(registry_repo: Path) -> None:
    (registry_repo / "environments" / "staging.yaml").write_text("- a\n- b\n")
    (msg,) = messages(registry_repo)
    assert msg.startswith("environments/staging.yaml:1:1: the file must hold a YAML mapping")


def test_missing_required_field(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    doc = yaml.safe_load(path.read_text())
    del doc["artifact"]["sha256"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (msg,) = messages(registry_repo)
    assert "artifact.sha256: required field is missing; add it" in msg
    assert msg.startswith("registry/m/1.0.0.yaml:")


def test_unknown_field_points_at_its_line(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    lines = path.read_text().splitlines()
    lines.insert(3, "colour: blue")
    path.write_text("\n".join(lines) + "\n")
    (msg,) = messages(registry_repo)
    assert msg.startswith("registry/m/1.0.0.yaml:4:1: colour: unknown field; remove it")


def test_non_semver_version(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    path.write_text(path.read_text().replace("version: 1.0.0", "version: '1.0'"))
    (msg,) = messages(registry_repo)
    assert "version: '1.0' is not a semantic version X.Y.Z" in msg


def test_name_disagrees_with_path(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    path.write_text(path.read_text().replace("name: m\n", "name: other\n"))
    (msg,) = messages(registry_repo)
    assert "name: 'other' disagrees with the directory 'm'" in msg
    assert msg.startswith("registry/m/1.0.0.yaml:1:1:")


def test_version_disagrees_with_file_name(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    path.rename(path.with_name("1.0.1.yaml"))
    assert any("disagrees with the file name '1.0.1.yaml'" in m for m in messages(registry_repo))


def test_environment_points_at_unregistered_version(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")
    set_environment(registry_repo, "staging", {"m": "9.9.9"})
    (msg,) = messages(registry_repo)
    assert msg.startswith("environments/staging.yaml:5:")
    assert "staging runs m@9.9.9, which is not registered" in msg


def test_parent_that_does_not_exist(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.1.0", parent="1.0.0")
    (msg,) = messages(registry_repo)
    assert "parent_version: m@1.0.0 is not registered" in msg


@pytest.mark.parametrize("bad", ["../../etc/passwd.gguf", "/abs/model.gguf", "a/b.gguf", ".."])
def test_artifact_name_cannot_escape(registry_repo: Path, bad: str) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    doc = yaml.safe_load(path.read_text())
    doc["artifact"]["file_name"] = bad
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    msgs = messages(registry_repo)
    assert any("artifact.file_name" in m and "no directories, no '..'" in m for m in msgs), msgs


def test_duplicate_keys_are_detected(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    path.write_text(path.read_text() + "base_model: sneaky\n")
    (msg,) = messages(registry_repo)
    assert "duplicate key 'base_model' (first on line 3)" in msg


@pytest.mark.parametrize("value", [".inf", "-.Inf", ".NaN"])
def test_non_finite_policy_number_names_its_line(registry_repo: Path, value: str) -> None:
    # The schema takes YAML's .inf and .nan as numbers; no threshold can use them, and an
    # agent given one would refuse it only at run time. validate refuses it in CI.
    policy = registry_repo / "registry" / "policy.yaml"
    text = policy.read_text()
    policy.write_text(text + f"rollback_triggers:\n  production:\n    error_rate: {value}\n")
    problems = validate_repo(registry_repo)
    assert [(p.file, p.code, p.line) for p in problems] == \
        [("registry/policy.yaml", "yaml", len(text.splitlines()) + 3)]
    assert f"{value!r} is not a finite number" in problems[0].message
    code, out = run_validate(registry_repo)
    assert code == 1 and f"registry/policy.yaml:{problems[0].line}:" in out, out


def test_finite_numbers_and_quoted_inf_still_parse(registry_repo: Path) -> None:
    policy = registry_repo / "registry" / "policy.yaml"
    policy.write_text(policy.read_text() + "rollback_triggers:\n  production:\n"
                      "    error_rate: 0.05\n    p95_ratio: 1.5e+0\n")
    assert messages(registry_repo) == []
    path = write_version(registry_repo, "m", "1.0.0")
    doc = yaml.safe_load(path.read_text())
    doc["base_model"] = ".inf"  # a string that spells the number: dumped quoted
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert "base_model: '.inf'" in path.read_text()
    assert messages(registry_repo) == []


def test_all_problems_reported_in_one_run(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.1.0", parent="1.0.0")
    set_environment(registry_repo, "staging", {"m": "2.0.0"})
    (registry_repo / "registry" / "policy.yaml").write_text("promotion: {order: [staging]}\n")
    code, out = run_validate(registry_repo)
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith(("registry/", "environments/"))]
    assert len(lines) == 4, out  # parent, env reference, policy gates + retention missing
    assert "4 problem(s) found" in out


def test_json_output(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.1.0", parent="1.0.0")
    code, out = run_validate(registry_repo, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["valid"] is False
    assert data["problems"][0]["code"] == "reference"
    assert data["problems"][0]["file"] == "registry/m/1.1.0.yaml"


def test_eval_hash_is_pinned(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")
    evals = registry_repo / "registry" / "evals"
    eval_file = next(evals.glob("*.txt"))
    eval_file.write_text(eval_file.read_text() + "more\n")
    (msg,) = messages(registry_repo)
    assert "eval sets are immutable" in msg


def test_dvc_pointer_must_agree(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")
    pointer = registry_repo / "registry" / "m" / "1.0.0.gguf.dvc"
    pointer.write_text(pointer.read_text().replace("size:", "size: 1\n  old_size:"))
    (msg,) = messages(registry_repo)
    assert "1.0.0.gguf.dvc says md5" in msg


# --- against a base ref ---------------------------------------------------------------


def test_edited_version_file_fails_against_base(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    sha = git_commit(registry_repo, "register m 1.0.0")
    path.write_text(path.read_text().replace("base_model: m", "base_model: changed"))
    problems = validate_repo(registry_repo, base="HEAD")
    assert [p.code for p in problems] == ["immutable"]
    assert problems[0].file == "registry/m/1.0.0.yaml"
    assert f"edited a released file (added in commit {sha[:7]}" in problems[0].message


def test_deleted_version_file_fails_against_base(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    git_commit(registry_repo, "register")
    path.unlink()
    path.with_name("1.0.0.gguf.dvc").unlink()
    code, out = run_validate(registry_repo, "--base", "HEAD")
    assert code == 1
    assert out.count("deleted a released file") == 2


def test_new_version_against_base_is_fine(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")
    git_commit(registry_repo, "register")
    write_version(registry_repo, "m", "1.1.0", parent="1.0.0")
    assert messages(registry_repo, base="HEAD") == []


def test_production_must_not_skip_staging(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")
    git_commit(registry_repo, "register")
    set_environment(registry_repo, "production", {"m": "1.0.0"})
    (msg,) = messages(registry_repo, base="HEAD")
    assert "m@1.0.0 enters production without having run in staging" in msg
    assert msg.startswith("environments/production.yaml:5:")


def test_promotion_after_staging_passes(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")
    set_environment(registry_repo, "staging", {"m": "1.0.0"})
    git_commit(registry_repo, "stage")
    set_environment(registry_repo, "production", {"m": "1.0.0"})
    assert messages(registry_repo, base="HEAD") == []


def test_rollback_to_earlier_production_version_is_allowed(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")
    write_version(registry_repo, "m", "1.1.0", parent="1.0.0")
    set_environment(registry_repo, "staging", {"m": "1.0.0"})
    git_commit(registry_repo, "stage 1.0.0")
    set_environment(registry_repo, "production", {"m": "1.0.0"})
    git_commit(registry_repo, "prod 1.0.0")
    set_environment(registry_repo, "staging", {"m": "1.1.0"})
    git_commit(registry_repo, "stage 1.1.0")
    set_environment(registry_repo, "production", {"m": "1.1.0"})
    git_commit(registry_repo, "prod 1.1.0")
    set_environment(registry_repo, "staging", {"m": "1.1.0"})
    set_environment(registry_repo, "production", {"m": "1.0.0"})
    assert messages(registry_repo, base="HEAD") == []


def test_unknown_base_ref_is_a_clear_error(registry_repo: Path) -> None:
    code, out = run_validate(registry_repo, "--base", "no-such-branch")
    assert code == 1
    assert "'no-such-branch' is not a commit" in out


def test_outside_a_registry(tmp_path: Path) -> None:
    code, out = run_validate(tmp_path)
    assert code == 1
    assert "no ggufops registry at or above" in out


def test_unexpected_error_exit_3(registry_repo: Path) -> None:
    (registry_repo / "registry" / "schema" / "policy.schema.json").write_text('{"type": 5}')
    code, out = run_validate(registry_repo)
    assert code == 3
    assert "--traceback" in out


def test_parallel_parsing_reports_the_same_problems(registry_repo: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(12):
        write_version(registry_repo, "m", f"1.{i}.0")
    bad = registry_repo / "registry" / "m" / "1.5.0.yaml"
    bad.write_text(bad.read_text() + "colour: blue\n")
    set_environment(registry_repo, "staging", {"m": "1.11.0"})
    serial = messages(registry_repo)
    monkeypatch.setattr("ggufops.registry.validate.PARALLEL_THRESHOLD", 4)
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    parallel = messages(registry_repo)
    assert parallel == serial
    assert len(serial) == 1 and "registry/m/1.5.0.yaml" in serial[0] and "colour" in serial[0]


def write_env(root: Path, env: str, models: dict[str, dict[str, object]]) -> None:
    body = {"environment": env, "models": models}
    (root / "environments" / f"{env}.yaml").write_text(f"# {env}\n" + yaml.safe_dump(
        body, sort_keys=False))


def canary_repo(root: Path) -> None:
    """m 1.0.0 in staging and production, 1.1.0 registered."""
    write_version(root, "m", "1.0.0")
    write_version(root, "m", "1.1.0", parent="1.0.0")
    set_environment(root, "staging", {"m": "1.0.0"})
    git_commit(root, "stage 1.0.0")
    set_environment(root, "production", {"m": "1.0.0"})
    git_commit(root, "prod 1.0.0")


def test_canary_must_not_skip_staging(registry_repo: Path) -> None:
    canary_repo(registry_repo)
    write_env(registry_repo, "production",
              {"m": {"version": "1.0.0", "canary": {"version": "1.1.0", "weight": 10}}})
    (msg,) = messages(registry_repo, base="HEAD")
    assert "m@1.1.0 enters production as a canary without having run in staging" in msg
    assert "deploy it to staging first" in msg
    assert msg.startswith("environments/production.yaml:7:")  # the canary's version line


def test_canary_after_staging_and_its_ramp_pass(registry_repo: Path) -> None:
    canary_repo(registry_repo)
    set_environment(registry_repo, "staging", {"m": "1.1.0"})
    git_commit(registry_repo, "stage 1.1.0")
    write_env(registry_repo, "production",
              {"m": {"version": "1.0.0", "canary": {"version": "1.1.0", "weight": 10}}})
    assert messages(registry_repo, base="HEAD") == []
    git_commit(registry_repo, "canary 1.1.0")
    set_environment(registry_repo, "staging", {"m": "1.0.0"})  # staging moved on
    write_env(registry_repo, "production",
              {"m": {"version": "1.0.0", "canary": {"version": "1.1.0", "weight": 50}}})
    assert messages(registry_repo, base="HEAD") == []  # a ramp: 1.1.0 enters nothing


def test_promotion_allowed_for_canaries(registry_repo: Path) -> None:
    canary_repo(registry_repo)
    reason = promotion_allowed(registry_repo, "production", "m", "1.1.0", "HEAD", canary=True)
    assert reason is not None
    assert reason.startswith("m@1.1.0 cannot enter production as a canary: it does not run "
                             "in staging")
    write_env(registry_repo, "production",
              {"m": {"version": "1.0.0", "canary": {"version": "1.1.0", "weight": 10}}})
    git_commit(registry_repo, "canary by hand")
    assert promotion_allowed(registry_repo, "production", "m", "1.1.0", "HEAD",
                             canary=True) is None
    assert promotion_allowed(registry_repo, "production", "m", "1.1.0", "HEAD") is not None


def test_a_canary_progress_deadline_must_be_positive(registry_repo: Path) -> None:
    policy = registry_repo / "registry" / "policy.yaml"
    kept = policy.read_text()
    policy.write_text(kept + "canary_analysis:\n  production: {progress_deadline: 0}\n")
    line = len(kept.splitlines()) + 2
    (problem,) = messages(registry_repo)
    assert problem.startswith(f"registry/policy.yaml:{line}:"), problem
    assert "progress_deadline" in problem
    policy.write_text(kept + "canary_analysis:\n  production: {progress_deadline: 900}\n")
    assert messages(registry_repo) == []
