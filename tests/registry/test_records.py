"""Environment records: the lenient reader keeps what it can, the strict one names file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufops.errors import EnvironmentFileError, YamlError
from ggufops.registry.envread import read_environment
from ggufops.registry.records import (
    Canary,
    EnvEntry,
    Environment,
    Segment,
    Shadow,
    environment_in,
)
from ggufops.registry.registry import Registry
from ggufops.registry.schemas import Validator, load_validators

REPO = Path(__file__).resolve().parents[2]
GOOD = """\
environment: prod
models:
  llama3-instruct:
    version: 2.0.0
    canary: {version: 2.1.0, weight: 10}
    overrides: {temperature: 0.2}
  phi-mini:
    version: 1.0.0
"""


@pytest.fixture(scope="module")
def validator() -> Validator:
    return load_validators(REPO)["environment"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "environments" / "prod.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_strict_reader_types_every_entry(tmp_path: Path, validator: Validator) -> None:
    env = read_environment(write(tmp_path, GOOD), validator)
    assert env == Environment("prod", {
        "llama3-instruct": EnvEntry("2.0.0", Canary("2.1.0", 10), {"temperature": 0.2}),
        "phi-mini": EnvEntry("1.0.0")})
    assert env.versions() == {"llama3-instruct": "2.0.0", "phi-mini": "1.0.0"}


@pytest.mark.parametrize(("canary", "words"), [
    ("weight: 101}", "models.llama3-instruct.canary.weight"),
    ("weight: 10, shade: 1}", "models.llama3-instruct.canary.shade: unknown field"),
])
def test_the_strict_reader_names_file_and_line(tmp_path: Path, validator: Validator,
                                               canary: str, words: str) -> None:
    path = write(tmp_path, GOOD.replace("weight: 10}", canary))
    with pytest.raises(EnvironmentFileError) as caught:
        read_environment(path, validator)
    assert str(caught.value).startswith(f"{path}:5:")
    assert words in str(caught.value)


def test_the_strict_reader_refuses_broken_yaml(tmp_path: Path, validator: Validator) -> None:
    path = write(tmp_path, "models: [\n")
    with pytest.raises(YamlError, match=str(path)):
        read_environment(path, validator)


def test_the_lenient_reader_keeps_keys_it_does_not_name() -> None:
    extra = "  phi-mini:\n    shadow: {version: 1.1.0}\n    group: a\n"
    text = GOOD.replace("  phi-mini:\n", extra)
    entry = environment_in(text, "abc123:environments/prod.yaml").models["phi-mini"]
    assert entry == EnvEntry("1.0.0", extra={"group": "a"}, shadow=Shadow("1.1.0", 0))


FULL = """\
rollout:
  waves: [{wave: "1"}, {wave: "2", zone: eu}]
groups:
  rag: [embedder, generator]
models:
  embedder: {version: 1.1.0, prompt: support@1.0.0}
  generator:
    version: 2.1.0
    shadow: {version: 2.2.0, percent: 5}
    segments:
      - selector: {zone: eu}
        version: 2.0.0
"""


def test_the_strict_reader_types_shadow_segments_prompt_groups_and_waves(
        tmp_path: Path, validator: Validator) -> None:
    env = read_environment(write(tmp_path, FULL), validator)
    assert env.groups == {"rag": ["embedder", "generator"]}
    assert env.waves == [{"wave": "1"}, {"wave": "2", "zone": "eu"}]
    assert env.models["embedder"] == EnvEntry("1.1.0", prompt="support@1.0.0")
    generator = env.models["generator"]
    assert generator == EnvEntry("2.1.0", shadow=Shadow("2.2.0", 5),
                                 segments=(Segment({"zone": "eu"}, "2.0.0"),))
    assert generator.versions() == ["2.1.0", "2.2.0", "2.0.0"]
    assert generator.running() == ["2.1.0"]


def test_the_lenient_reader_skips_malformed_shadows_segments_and_waves() -> None:
    text = ("rollout: {waves: [wave-1, {wave: 2}]}\ngroups: {rag: embedder}\nmodels:\n"
            "  m: {version: 1.0.0, shadow: 1.1.0, segments: [{selector: {z: eu}}, 3],"
            " prompt: 7}\n")
    env = environment_in(text, "environments/prod.yaml")
    assert (env.waves, env.groups) == ([{"wave": "2"}], {})
    assert env.models["m"] == EnvEntry("1.0.0")


@pytest.mark.parametrize("text", ["models: [\n", "just text", "models: [1, 2]"])
def test_the_lenient_reader_reads_a_broken_file_as_empty(text: str) -> None:
    assert environment_in(text, "abc123:environments/prod.yaml") == Environment("prod")


def test_the_lenient_reader_skips_what_it_cannot_read() -> None:
    text = "models:\n  a: {canary: {version: 1.1.0}}\n  b: not-an-entry\n"
    assert environment_in(text, "environments/prod.yaml").models == {
        "a": EnvEntry("", Canary("1.1.0", 0))}


def test_the_registry_reads_its_environment_as_a_record(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    registry = Registry(tmp_path)
    entry = registry.environment_record("prod").models["llama3-instruct"]
    assert entry.canary == Canary("2.1.0", 10)
    assert registry.deployed("prod") == {"llama3-instruct": "2.0.0", "phi-mini": "1.0.0"}
