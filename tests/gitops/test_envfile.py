"""Environment file edits change exactly the entry they mean to, and nothing else."""

from __future__ import annotations

import pytest
import yaml

from ggufops.errors import EnvironmentFileError
from ggufops.gitops import envfile

WHERE = "environments/production.yaml"

TEXT = """\
# Production: change only through pull requests.
environment: production
models:
  # the chat assistant
  llama3-instruct:
    version: "2.0.0"   # pinned after the incident of 2026-03-02
    overrides: {temperature: 0.2}
  phi-mini:
    version: 1.0.0
    canary:
      version: 1.1.0
      weight: 10
# end of file
"""


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    a, b = old.splitlines(), new.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_set_version_changes_one_line_and_keeps_comments_and_quotes() -> None:
    new = envfile.set_version(TEXT, "llama3-instruct", "2.1.0", WHERE)
    assert changed_lines(TEXT, new) == [
        ('    version: "2.0.0"   # pinned after the incident of 2026-03-02',
         '    version: "2.1.0"   # pinned after the incident of 2026-03-02')]
    assert envfile.versions(new, WHERE) == {"llama3-instruct": "2.1.0", "phi-mini": "1.0.0"}


def test_promoting_the_canary_removes_its_block() -> None:
    new = envfile.set_version(TEXT, "phi-mini", "1.1.0", WHERE)
    models = yaml.safe_load(new)["models"]
    assert models["phi-mini"] == {"version": "1.1.0"}
    assert models["llama3-instruct"] == {"version": "2.0.0", "overrides": {"temperature": 0.2}}
    assert "# end of file" in new and "# the chat assistant" in new


def test_new_model_is_appended_and_flow_empty_mapping_becomes_block() -> None:
    text = "# staging\nenvironment: staging\nmodels: {}\n"
    new = envfile.set_version(text, "phi-mini", "1.0.0", "environments/staging.yaml")
    assert new == "# staging\nenvironment: staging\nmodels:\n  phi-mini:\n    version: 1.0.0\n"
    newer = envfile.set_version(new, "llama3-instruct", "2.0.0", "environments/staging.yaml")
    assert list(yaml.safe_load(newer)["models"]) == ["phi-mini", "llama3-instruct"]


def test_four_space_indentation_is_kept() -> None:
    text = ("environment: qa\nmodels:\n    a:\n        version: 1.0.0\n    b:\n"
            "        version: 2.0.0\n")
    new = envfile.set_version(text, "b", "2.0.1", "environments/qa.yaml")
    assert new == text.replace("2.0.0", "2.0.1")


def test_unchanged_text_round_trips_byte_for_byte() -> None:
    new = envfile.set_version(TEXT, "llama3-instruct", "2.0.0", WHERE)
    assert new == TEXT


def test_not_a_mapping_is_a_clear_error() -> None:
    with pytest.raises(EnvironmentFileError, match=r"environments/production\.yaml: must be a "):
        envfile.set_version("- a\n- b\n", "m", "1.0.0", WHERE)
    with pytest.raises(EnvironmentFileError, match=r"models\.m must be a mapping"):
        envfile.set_version("models:\n  m: 1.0.0\n", "m", "1.0.0", WHERE)


def test_invalid_yaml_names_the_file() -> None:
    with pytest.raises(EnvironmentFileError, match=r"environments/production\.yaml"):
        envfile.versions("models: [\n", WHERE)


def test_restore_entry_and_changed_models() -> None:
    old_entry = envfile.entry_node(TEXT, "phi-mini", WHERE)
    edited = envfile.set_version(TEXT, "phi-mini", "1.1.0", WHERE)
    restored = envfile.restore_entry(edited, "phi-mini", old_entry, WHERE)
    assert yaml.safe_load(restored) == yaml.safe_load(TEXT)
    assert envfile.changed_models(TEXT, edited, WHERE) == ["phi-mini"]
    assert envfile.unified_diff(TEXT, TEXT, WHERE) == ""


def test_removing_a_canary_in_the_middle_keeps_the_comment_before_the_next_model() -> None:
    text = ("models:\n  a:\n    version: 1.0.0  # keep\n    canary:\n      version: 1.1.0\n"
            "      weight: 5  # five\n    # about b\n  b:\n    version: 2.0.0\n")
    new = envfile.set_version(text, "a", "1.1.0", WHERE)
    assert new == ("models:\n  a:\n    version: 1.1.0  # keep\n    # about b\n  b:\n"
                   "    version: 2.0.0\n")


def test_set_canary_adds_a_block_after_version_keeping_comments_and_quotes() -> None:
    new = envfile.set_canary(TEXT, "llama3-instruct", "2.1.0", 10, WHERE)
    assert new == TEXT.replace(
        "    overrides:", "    canary:\n      version: 2.1.0\n      weight: 10\n    overrides:")
    assert envfile.remove_canary(new, "llama3-instruct", WHERE) == TEXT
    models = envfile.read_models(new, WHERE)
    assert envfile.canary(models["llama3-instruct"]) == ("2.1.0", 10)
    assert envfile.canary(models["phi-mini"]) == ("1.1.0", 10)


def test_ramp_changes_only_the_weight_line() -> None:
    new = envfile.set_canary(TEXT, "phi-mini", "1.1.0", 50, WHERE)
    assert changed_lines(TEXT, new) == [("      weight: 10", "      weight: 50")]


def test_canary_block_goes_before_the_comments_about_the_next_model() -> None:
    text = "models:\n  a:\n    version: 1.0.0  # keep\n    # about b\n  b:\n    version: 2.0.0\n"
    new = envfile.set_canary(text, "a", "1.1.0", 5, WHERE)
    assert new == ("models:\n  a:\n    version: 1.0.0  # keep\n    canary:\n"
                   "      version: 1.1.0\n      weight: 5\n    # about b\n  b:\n"
                   "    version: 2.0.0\n")
    assert envfile.remove_canary(new, "a", WHERE) == text


def test_canary_needs_a_primary_version() -> None:
    with pytest.raises(EnvironmentFileError, match=r"models\.new must be a mapping with "
                       r"`version:`; deploy a version of it first"):
        envfile.set_canary(TEXT, "new", "1.0.0", 5, WHERE)
    flow = envfile.set_canary("models:\n  a: {version: 1.0.0}\n", "a", "1.1.0", 5, WHERE)
    assert flow == "models:\n  a: {version: 1.0.0, canary: {version: 1.1.0, weight: 5}}\n"
