"""EnvEntry.canary_version: the one reader of an environment entry's canary version."""

from __future__ import annotations

from typing import Any

import pytest

from ggufops.registry.records import EnvEntry, environment_from_data


@pytest.mark.parametrize(("entry", "version"), [
    ({"version": "1.0.0", "canary": {"version": "1.1.0", "weight": 10}}, "1.1.0"),
    ({"version": "1.0.0"}, None),
    ({"version": "1.0.0", "canary": None}, None),
    ({"version": "1.0.0", "canary": "1.1.0"}, None),  # malformed (old history): no canary
    ({"version": "1.0.0", "canary": {"weight": 10}}, None),
])
def test_canary_version(entry: dict[str, Any], version: str | None) -> None:
    assert EnvEntry.from_doc(entry).canary_version == version


def test_an_entry_that_is_not_a_mapping_is_skipped() -> None:
    assert environment_from_data("prod", {"models": {"m": "not an entry"}}).models == {}
