"""Cache of deterministic benchmark results (quality only; speed is always remeasured).

An entry is a small JSON file under `<root>/<kind>/<key[:2]>/<key>.json`; the key is the
sha256 of everything the result depends on: the artifact(s) sha256, the eval set sha256,
the llama.cpp build, the CPU model, the thread count and the measurement settings. A
corrupt or unreadable entry is treated as missing and measured again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ggufops.atomic import atomic_write_text

DEFAULT_DIR = ".ggufops/cache/bench"


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class BenchCache:
    """A directory of JSON results, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.json"

    def get(self, kind: str, parts: dict[str, Any]) -> dict[str, Any] | None:
        path = self._path(kind, cache_key(parts))
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        if not isinstance(entry, dict) or entry.get("key") != parts:
            self.misses += 1
            return None
        self.hits += 1
        value: dict[str, Any] = entry["value"]
        return value

    def put(self, kind: str, parts: dict[str, Any], value: dict[str, Any]) -> None:
        path = self._path(kind, cache_key(parts))
        atomic_write_text(path, json.dumps({"key": parts, "value": value}, sort_keys=True))


class NoCache(BenchCache):
    """Measure everything (`--no-cache`)."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))

    def get(self, kind: str, parts: dict[str, Any]) -> dict[str, Any] | None:
        self.misses += 1
        return None

    def put(self, kind: str, parts: dict[str, Any], value: dict[str, Any]) -> None:
        return None
