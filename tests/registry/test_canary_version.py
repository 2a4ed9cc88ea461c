"""canary_version: the one reader of an environment entry's canary version."""

from __future__ import annotations

from typing import Any

import pytest

from ggufops.registry.registry import canary_version


@pytest.mark.parametrize(("entry", "version"), [
    ({"version": "1.0.0", "canary": {"version": "1.1.0", "weight": 10}}, "1.1.0"),
    ({"version": "1.0.0"}, None),
    ({"version": "1.0.0", "canary": None}, None),
    ({"version": "1.0.0", "canary": "1.1.0"}, None),  # malformed (old history): no canary
    ({"version": "1.0.0", "canary": {"weight": 10}}, None),
    ("not an entry", None),
])
def test_canary_version(entry: Any, version: str | None) -> None:
    assert canary_version(entry) == version
