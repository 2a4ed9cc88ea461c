"""The compatibility matrix in `validate`: prompt configs pinned by environments must fit the
versions they run with (context length, chat template, requires.prompts), against real git
repositories; and the minimum-runtime table register uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ggufops.cli import main
from ggufops.registry import compat
from ggufops.registry.records import EnvEntry
from ggufops.registry.validate import Problem, validate_repo
from testing.repos import git_commit, line_of, set_environment, write_version

PROMPT = {"system_prompt": "You answer questions about our product.",
          "max_prompt_tokens": 150, "max_tokens": 100}


def write_prompt(root: Path, name: str, version: str, **fields: Any) -> Path:
    path = root / "prompts" / name / f"{version}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**PROMPT, **fields}, sort_keys=False))
    return path


def edit_version(path: Path, **top: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    doc.update(top)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def pin(root: Path, env: str, model: str, version: str, prompt: str, **extra: Any) -> Path:
    path = set_environment(root, env, {model: version})
    doc = yaml.safe_load(path.read_text())
    doc["models"][model].update(prompt=prompt, **extra)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


@pytest.fixture
def support_repo(registry_repo: Path) -> Path:
    """m@1.0.0 (context 256, no GGUF chat template, chatml) and prompt support@1.0.0 (250)."""
    write_version(registry_repo, "m", "1.0.0")
    write_prompt(registry_repo, "support", "1.0.0")
    return registry_repo


def test_a_prompt_config_that_fits_is_valid_and_old_files_stay_valid(support_repo: Path) -> None:
    pin(support_repo, "staging", "m", "1.0.0", "support@1.0.0")
    set_environment(support_repo, "production", {"m": "1.0.0"})  # no pin: nothing to check
    git_commit(support_repo, "pin")
    assert validate_repo(support_repo) == []
    result = CliRunner().invoke(main, ["--repo", str(support_repo), "validate"])
    assert result.exit_code == 0, result.output


def test_prompt_plus_max_tokens_past_the_context_names_both_files(support_repo: Path) -> None:
    write_prompt(support_repo, "support", "2.0.0", max_prompt_tokens=200, max_tokens=100)
    env = pin(support_repo, "staging", "m", "1.0.0", "support@2.0.0")
    problem = only(validate_repo(support_repo))
    assert (problem.file, problem.line) == ("environments/staging.yaml",
                                            line_of(env, "prompt: support@2.0.0"))
    assert problem.code == "compat"
    assert "models.m.prompt" in problem.message
    assert "max_prompt_tokens 200 + max_tokens 100 = 300 (prompts/support/2.0.0.yaml:3)" \
        in problem.message
    version = support_repo / "registry" / "m" / "1.0.0.yaml"
    assert f"gguf.context_length 256 (registry/m/1.0.0.yaml:{line_of(version, 'context_length')})" \
        in problem.message


def test_the_canary_must_fit_the_pinned_prompt_too(support_repo: Path) -> None:
    short = write_version(support_repo, "m", "1.1.0", parent="1.0.0")
    doc = yaml.safe_load(short.read_text())
    doc["gguf"]["context_length"] = 128
    short.write_text(yaml.safe_dump(doc, sort_keys=False))
    pin(support_repo, "staging", "m", "1.0.0", "support@1.0.0",
        canary={"version": "1.1.0", "weight": 10})
    problem = only(validate_repo(support_repo))
    assert "for m@1.1.0" in problem.message and "gguf.context_length 128" in problem.message


def test_a_prompt_needing_the_files_own_template_refuses_a_file_without_one(
        support_repo: Path) -> None:
    write_prompt(support_repo, "support", "1.1.0", prompt_template="gguf")
    pin(support_repo, "staging", "m", "1.0.0", "support@1.1.0")
    problem = only(validate_repo(support_repo))
    assert "prompt_template gguf" in problem.message
    assert "gguf.chat_template_sha256 is null at registry/m/1.0.0.yaml:" in problem.message


def test_a_system_prompt_on_a_version_without_chat_is_refused(support_repo: Path) -> None:
    pin(support_repo, "staging", "m", "1.0.0", "support@1.0.0",
        overrides={"prompt_template": "none"})
    problem = only(validate_repo(support_repo))
    assert "system_prompt needs a chat template" in problem.message


def test_requires_prompts_excludes_other_prompt_configs(support_repo: Path) -> None:
    write_prompt(support_repo, "support", "1.1.0")
    version = write_version(support_repo, "m", "1.2.0", parent="1.0.0")
    edit_version(version, requires={"prompts": ["support@1.0.0"]})
    pin(support_repo, "staging", "m", "1.2.0", "support@1.1.0")
    problem = only(validate_repo(support_repo))
    assert problem.file == "environments/staging.yaml"
    assert f"registry/m/1.2.0.yaml:{line_of(version, 'prompts:')} requires.prompts lists " \
        "only support@1.0.0" in problem.message
    pin(support_repo, "staging", "m", "1.2.0", "support@1.0.0")
    assert validate_repo(support_repo) == []


def test_unknown_pins_and_listed_prompts_are_named(support_repo: Path) -> None:
    version = write_version(support_repo, "m", "1.2.0", parent="1.0.0")
    edit_version(version, requires={"prompts": ["gone@1.0.0"]})
    pin(support_repo, "staging", "m", "1.0.0", "missing@3.0.0")
    problems = [str(p) for p in validate_repo(support_repo)]
    assert len(problems) == 2, problems
    assert "staging pins missing@3.0.0, but prompts/missing/3.0.0.yaml does not exist" \
        in problems[0]
    assert problems[1].startswith("registry/m/1.2.0.yaml:")
    assert "requires.prompts: gone@1.0.0 has no valid prompts/gone/1.0.0.yaml" in problems[1]


def test_bad_prompt_configs_and_pins_fail_their_schemas(support_repo: Path) -> None:
    bad = write_prompt(support_repo, "support", "9.0.0", max_tokens=0, prompt_template="x")
    env = pin(support_repo, "staging", "m", "1.0.0", "support-1.0.0")
    problems = [str(p) for p in validate_repo(support_repo)]
    assert any(p.startswith(f"environments/staging.yaml:{line_of(env, 'prompt:')}:")
               and "is not a prompt config reference: write name@X.Y.Z" in p for p in problems)
    assert any(p.startswith(f"prompts/support/9.0.0.yaml:{line_of(bad, 'max_tokens')}:")
               and "max_tokens" in p for p in problems)
    assert any("'x' is not a chat template" in p for p in problems)


def test_requires_block_is_schema_checked(support_repo: Path) -> None:
    version = support_repo / "registry" / "m" / "1.0.0.yaml"
    edit_version(version, requires={"llama_cpp_python": "0.3", "validated_with": {}})
    problems = [str(p) for p in validate_repo(support_repo)]
    assert any("'0.3' is not a minimum version: write >=X.Y.Z" in p for p in problems)
    assert any("requires.validated_with.llama_cpp_python: required field is missing" in p
               for p in problems)


# --- the minimum-runtime table ------------------------------------------------------------------


def test_known_architecture_and_file_type_give_the_gguf_baseline() -> None:
    assert compat.minimum_runtime("llama", "q4_k_m", "0.3.16") == ">=0.1.79"
    assert compat.requires_block("llama", "q8_0", None) == {"llama_cpp_python": ">=0.1.79"}


def test_unknown_entries_fall_back_to_the_validated_runtime_or_nothing() -> None:
    assert compat.minimum_runtime("gemma3", "q4_k_m", "0.3.16+cpu") == ">=0.3.16"
    assert compat.minimum_runtime("llama", "iq2_xxs", "0.3.2") == ">=0.3.2"
    assert compat.requires_block("qwen3", "q4_0", None) == {}
    assert compat.requires_block("qwen3", "q4_0", "0.3.9") == {
        "llama_cpp_python": ">=0.3.9", "validated_with": {"llama_cpp_python": "0.3.9"}}


def test_release_keys_compare_numerically() -> None:
    assert compat.release_key("0.3.16") > compat.release_key(">=0.3.9")  # type: ignore[operator]
    assert compat.release_key("main") is None


def test_segment_versions_run_only_where_the_selector_matches() -> None:
    entry = EnvEntry.from_doc({"version": "2.0.0",
                               "segments": [{"selector": {"zone": "eu"}, "version": "1.0.0"}]})
    assert [v for v, _ in compat.runs_on(entry, {"zone": "eu"})] == ["2.0.0", "1.0.0"]
    assert [v for v, _ in compat.runs_on(entry, {"zone": "us"})] == ["2.0.0"]


def test_a_merged_prompt_config_is_immutable_against_the_base(support_repo: Path) -> None:
    sha = git_commit(support_repo, "prompt support 1.0.0")
    path = write_prompt(support_repo, "support", "1.0.0", max_tokens=99)
    write_prompt(support_repo, "support", "1.1.0", max_tokens=99)  # a new version is fine
    (problem,) = validate_repo(support_repo, base="HEAD")
    assert (problem.file, problem.code) == ("prompts/support/1.0.0.yaml", "immutable")
    assert f"edited a released file (added in commit {sha[:7]}" in problem.message
    path.unlink()
    assert "deleted a released file" in only(validate_repo(support_repo, base="HEAD")).message
