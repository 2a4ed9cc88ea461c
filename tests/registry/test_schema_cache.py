"""Compiled schemas are reused while their text is unchanged (the sync agent validates
every commit), and a changed schema is compiled, and checked, again."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ggufops.registry import schemas


def test_unchanged_schemas_are_compiled_once(registry_repo: Path, tmp_path: Path) -> None:
    first = schemas.load_validators(registry_repo)
    assert schemas.load_validators(registry_repo) == first
    path = registry_repo / "registry" / "schema" / "environment.schema.json"
    schema = json.loads(path.read_text())
    schema["description"] = "changed"
    path.write_text(json.dumps(schema))
    again = schemas.load_validators(registry_repo)
    assert again["environment"] is not first["environment"]
    assert again["policy"] is first["policy"]
    schema["type"] = "no-such-type"
    path.write_text(json.dumps(schema))
    with pytest.raises(jsonschema.SchemaError):
        schemas.load_validators(registry_repo)
