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

ENTRY_KEYS = ("version", "canary", "overrides", "shadow", "segments", "prompt")


@dataclass(frozen=True)
class Canary:
    """A canary of an environment entry: its version and its share of traffic (0-100)."""

    version: str
    weight: int


@dataclass(frozen=True)
class Shadow:
    """A shadow of an environment entry: requests mirrored to `version`, `percent` of them."""

    version: str
    percent: int


@dataclass(frozen=True)
class Segment:
    """Hosts whose labels match `selector` run `version` (a partial rollback)."""

    selector: dict[str, str]
    version: str


@dataclass(frozen=True)
class EnvEntry:
    """One model of an environment file. `extra` keeps keys this record does not name."""

    version: str
    canary: Canary | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    shadow: Shadow | None = None
    segments: tuple[Segment, ...] = ()
    prompt: str | None = None  # the pinned prompt config, name@X.Y.Z

    @property
    def canary_version(self) -> str | None:
        return self.canary.version if self.canary is not None else None

    def running(self) -> list[str]:
        """The primary and the canary version, those that are set."""
        return [v for v in (self.version, self.canary_version) if v]

    def versions(self) -> list[str]:
        """Every version the entry may run: primary, canary, shadow, segments (no repeats)."""
        found = [*self.running(), *([self.shadow.version] if self.shadow else []),
                 *(s.version for s in self.segments)]
        return list(dict.fromkeys(found))

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EnvEntry:
        """The entry of a parsed mapping; lenient: a missing version reads as ''."""
        version = doc.get("version")
        overrides = doc.get("overrides")
        prompt = doc.get("prompt")
        extra = {k: v for k, v in doc.items() if k not in ENTRY_KEYS}
        return cls("" if version is None else str(version), _canary(doc.get("canary")),
                   dict(overrides) if isinstance(overrides, dict) else {}, extra,
                   _shadow(doc.get("shadow")), _segments(doc.get("segments")),
                   prompt if isinstance(prompt, str) else None)


NO_ENTRY = EnvEntry("")  # a model the environment does not name


def _canary(spec: Any) -> Canary | None:
    if not isinstance(spec, dict) or spec.get("version") is None:
        return None
    weight = spec.get("weight")
    return Canary(str(spec["version"]), weight if isinstance(weight, int) else 0)


def _shadow(spec: Any) -> Shadow | None:
    if not isinstance(spec, dict) or spec.get("version") is None:
        return None
    percent = spec.get("percent")
    return Shadow(str(spec["version"]), percent if isinstance(percent, int) else 0)


def _segments(spec: Any) -> tuple[Segment, ...]:
    return tuple(Segment(_selector(s.get("selector")), str(s["version"]))
                 for s in spec if isinstance(s, dict) and s.get("version") is not None) \
        if isinstance(spec, list) else ()


def _selector(spec: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in spec.items()} if isinstance(spec, dict) else {}


@dataclass(frozen=True)
class Environment:
    """An environment file: model name -> entry, its release groups and rollout waves."""

    name: str
    models: dict[str, EnvEntry] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> member models
    waves: list[dict[str, str]] = field(default_factory=list)  # `rollout.waves`, in order

    def versions(self) -> dict[str, str]:
        """model name -> its primary version."""
        return {model: entry.version for model, entry in self.models.items()}


def environment_from_data(name: str, data: Any) -> Environment:
    """The lenient reader: an Environment of parsed YAML, skipping malformed parts."""
    if not isinstance(data, dict):
        return Environment(name)
    models = data.get("models")
    entries = {str(m): EnvEntry.from_doc(e) for m, e in models.items()
               if isinstance(e, dict)} if isinstance(models, dict) else {}
    return Environment(name, entries, groups_of(data), _waves(data.get("rollout")))


def groups_of(data: Any) -> dict[str, list[str]]:
    """group name -> member models of a parsed environment file ({} without groups)."""
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, dict):
        return {}
    return {str(g): [str(m) for m in members] for g, members in groups.items()
            if isinstance(members, list)}


def _waves(rollout: Any) -> list[dict[str, str]]:
    waves = rollout.get("waves") if isinstance(rollout, dict) else None
    return [_selector(w) for w in waves if isinstance(w, dict)] \
        if isinstance(waves, list) else []


def environment_in(raw: bytes | str, where: str) -> Environment:
    """The lenient reader of an environment file's bytes: empty if it is not YAML."""
    name = Path(where.rsplit(":", 1)[-1]).stem
    try:
        return environment_from_data(name, yamlio.parse(raw, Path(where)).data)
    except YamlError:
        return Environment(name)
