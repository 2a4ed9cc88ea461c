"""Typed records of the registry's files: an environment and its model entries.

Plain data, no schema library: `environment_from_data` is the lenient reader (for history,
gates against an old base and rollbacks of a bad state: malformed parts are skipped);
`registry/envread.py` holds the strict one (schema-validated, errors name file:line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import yamlio
from ggufops.errors import YamlError

ENTRY_KEYS = ("version", "canary", "overrides")


@dataclass(frozen=True)
class CanaryAnalysis:
    """A canary's analysis plan: the weights it walks (the last, 100, is the promotion)
    and the seconds between two analyses (docs/progressive-delivery.md#canary-analysis)."""

    steps: tuple[int, ...]
    interval: float

    def as_doc(self) -> dict[str, Any]:
        interval = int(self.interval) if self.interval.is_integer() else self.interval
        return {"steps": list(self.steps), "interval": interval}


@dataclass(frozen=True)
class Canary:
    """A canary of an environment entry: its version and its share of traffic (0-100),
    and the analysis plan that ramps it automatically (None: ramped by hand)."""

    version: str
    weight: int
    analysis: CanaryAnalysis | None = None


@dataclass(frozen=True)
class EnvEntry:
    """One model of an environment file. `extra` keeps keys this record does not name yet."""

    version: str
    canary: Canary | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def canary_version(self) -> str | None:
        return self.canary.version if self.canary is not None else None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EnvEntry:
        """The entry of a parsed mapping; lenient: a missing version reads as ''."""
        version = doc.get("version")
        overrides = doc.get("overrides")
        extra = {k: v for k, v in doc.items() if k not in ENTRY_KEYS}
        return cls("" if version is None else str(version), _canary(doc.get("canary")),
                   dict(overrides) if isinstance(overrides, dict) else {}, extra)


NO_ENTRY = EnvEntry("")  # a model the environment does not name


def _canary(spec: Any) -> Canary | None:
    if not isinstance(spec, dict) or spec.get("version") is None:
        return None
    weight = spec.get("weight")
    return Canary(str(spec["version"]), weight if isinstance(weight, int) else 0,
                  _analysis(spec.get("analysis")))


def _analysis(spec: Any) -> CanaryAnalysis | None:
    """The lenient reader of `canary.analysis`: None unless it has a list of integer
    steps and a numeric interval (validate reports what is wrong with it)."""
    if not isinstance(spec, dict):
        return None
    steps, interval = spec.get("steps"), spec.get("interval")
    if not isinstance(steps, list) or not all(type(s) is int for s in steps) or not steps:
        return None
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        return None
    return CanaryAnalysis(tuple(steps), float(interval))


@dataclass(frozen=True)
class Environment:
    """An environment file: model name -> entry."""

    name: str
    models: dict[str, EnvEntry] = field(default_factory=dict)

    def versions(self) -> dict[str, str]:
        """model name -> its primary version."""
        return {model: entry.version for model, entry in self.models.items()}


def environment_from_data(name: str, data: Any) -> Environment:
    """The lenient reader: an Environment of parsed YAML, skipping malformed parts."""
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        return Environment(name)
    return Environment(name, {str(m): EnvEntry.from_doc(e) for m, e in models.items()
                              if isinstance(e, dict)})


def environment_in(raw: bytes | str, where: str) -> Environment:
    """The lenient reader of an environment file's bytes: empty if it is not YAML."""
    name = Path(where.rsplit(":", 1)[-1]).stem
    try:
        return environment_from_data(name, yamlio.parse(raw, Path(where)).data)
    except YamlError:
        return Environment(name)
