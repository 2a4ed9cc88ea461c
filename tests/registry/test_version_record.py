"""VersionRecord and ArtifactRef: a version file as a typed record."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ggufops.artifacts.tiers import TierObject
from ggufops.registry.records import ArtifactRef, GgufFacts, VersionRecord
from ggufops.registry.registry import Registry, VersionRef, display_id
from testing.repos import make_registry, write_version


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    root = make_registry(tmp_path / "registry")
    write_version(root, "phi-mini", "1.0.0")
    write_version(root, "phi-mini", "1.1.0", parent="1.0.0", quantization="q4_0")
    return Registry(root)


def test_a_version_file_reads_as_a_record(registry: Registry) -> None:
    doc = registry.load_version("phi-mini", "1.1.0")
    record = registry.load_record("phi-mini", "1.1.0")
    data = b"phi-mini@1.1.0"
    assert record.artifact == ArtifactRef("1.1.0.gguf", hashlib.sha256(data).hexdigest(),
                                          len(data), hashlib.md5(data).hexdigest())
    assert (record.name, record.version, record.quantization, record.parent_version) == (
        "phi-mini", "1.1.0", "q4_0", "1.0.0")
    assert record.display_id == display_id(doc) == "phi-mini-v1.1.0-q4_0"
    assert record.gguf == GgufFacts("llama", 123456, 256,
                                    hashlib.sha256(b"tokenizer").hexdigest(), None)
    assert record.inference["prompt_template"] == "chatml"
    assert record.eval_set == doc["eval"]["set"] and record.eval_sha256 == doc["eval"]["sha256"]
    assert registry.load_record("phi-mini", "1.0.0").parent_version is None


def test_the_tiers_object_is_built_from_the_artifact_ref(registry: Registry) -> None:
    ref = VersionRef("phi-mini", "1.0.0")
    art = registry.load_record(ref.name, ref.version).artifact
    assert TierObject.of(ref, registry.load_ref(ref)) == TierObject(ref, art.dvc_md5,
                                                                    art.sha256, art.size)


def test_a_record_without_an_artifact_fails_like_indexing_did(registry: Registry) -> None:
    doc = registry.load_version("phi-mini", "1.0.0")
    del doc["artifact"]
    with pytest.raises(KeyError, match="artifact"):
        VersionRecord.from_doc(doc)
