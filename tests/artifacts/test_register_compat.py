"""`register` records what a version needs (`requires:`): the minimum llama-cpp-python from
its architecture and file type, and the installed runtime it loaded with; real SeaweedFS,
real llama.cpp, toys and the real SmolLM2."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ggufops.artifacts import register
from ggufops.cli import main
from ggufops.registry.registry import Registry
from ggufops.registry.validate import validate_repo
from testing.s3 import write_tiny_gguf

INSTALLED = metadata.version("llama_cpp_python")


def requires_of(root: Path, model: str, version: str) -> dict[str, object]:
    doc = yaml.safe_load((root / "registry" / model / f"{version}.yaml").read_text())
    return dict(doc.get("requires") or {})


def test_a_toy_that_loads_records_the_runtime_it_was_validated_with(
        s3_registry: Path, toy_models: dict[str, Path]) -> None:
    request = register.RegisterRequest(source=toy_models["baseline"], model="toy",
                                       version="1.0.0")
    result = register.register(Registry(s3_registry), request)
    assert result.warnings == []
    requires = requires_of(s3_registry, "toy", "1.0.0")
    assert requires["validated_with"] == {"llama_cpp_python": INSTALLED}
    assert str(requires["llama_cpp_python"]).startswith(">=")
    assert validate_repo(s3_registry) == []


def test_a_file_the_runtime_cannot_load_is_registered_without_validated_with(
        s3_registry: Path, tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", file_type=1)  # header only: no layers
    result = CliRunner().invoke(main, ["--repo", str(s3_registry), "register", str(tiny),
                                       "--model", "tiny", "--version", "1.0.0"])
    assert result.exit_code == 0, result.output
    assert "warning: not validated with a runtime (no requires.validated_with): llama.cpp " \
        f"cannot load {tiny}" in result.output
    # llama + f16 are in the table: the minimum is known without a load
    assert requires_of(s3_registry, "tiny", "1.0.0") == {"llama_cpp_python": ">=0.1.79"}
    assert validate_repo(s3_registry) == []


def test_a_registry_whose_schema_predates_requires_gets_none(
        s3_registry: Path, tmp_path: Path) -> None:
    schema_path = s3_registry / "registry" / "schema" / "model-version.schema.json"
    schema = json.loads(schema_path.read_text())
    del schema["properties"]["requires"]
    schema_path.write_text(json.dumps(schema))
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", file_type=1)
    register.register(Registry(s3_registry),
                      register.RegisterRequest(source=tiny, model="tiny", version="1.0.0"))
    assert requires_of(s3_registry, "tiny", "1.0.0") == {}
    assert validate_repo(s3_registry) == []


@pytest.mark.slow
def test_register_on_the_real_smollm2_records_validated_with(
        s3_registry: Path, smollm2: Path) -> None:
    result = CliRunner().invoke(main, ["--repo", str(s3_registry), "register", str(smollm2),
                                       "--model", "smollm2", "--version", "1.0.0", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["warnings"] == []
    # SmolLM2 is a llama-architecture q4_1 file: both in the table (GGUF baseline 0.1.79)
    assert answer["version"]["requires"] == {"llama_cpp_python": ">=0.1.79",
                                             "validated_with": {"llama_cpp_python": INSTALLED}}
    assert requires_of(s3_registry, "smollm2", "1.0.0") == answer["version"]["requires"]
