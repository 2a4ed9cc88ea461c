"""Typed records of the registry's files: a version and its artifact, an environment and its
model entries.

Plain data, no schema library: `environment_from_data` is the lenient reader (for history,
gates against an old base and rollbacks of a bad state: malformed parts are skipped);
`registry/envread.py` holds the strict one (schema-validated, errors name file:line).
`VersionRecord.from_doc` needs what every reader indexed (name, version, quantization,
artifact: a KeyError otherwise, as indexing the dict raised); the rest reads leniently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import yamlio
from ggufops.errors import YamlError

ENTRY_KEYS = ("version", "canary", "overrides", "shadow", "segments", "prompt")


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
class Shadow:
    """A shadow of an environment entry: requests mirrored to `version`, `percent` of them."""

    version: str
    percent: int


@dataclass(frozen=True)
class Segment:
    """Hosts whose labels match `selector` run `version` (a partial rollback)."""

    selector: dict[str, str]
    version: str

    def runs_on(self, labels: Mapping[str, str]) -> bool:
        return matches(self.selector, labels)


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A host with `labels` is selected by `selector` (a segment's, a wave's)."""
    return all(labels.get(str(k)) == str(v) for k, v in selector.items())


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


@dataclass(frozen=True)
class ArtifactRef:
    """A version's GGUF file as its version file names it: `artifact:` in the schema."""

    file_name: str  # beside the version file: registry/<model>/<file_name>
    sha256: str  # of the bytes: what a host verifies
    size: int
    dvc_md5: str  # DVC's md5: the S3 key under the remote, <prefix>/files/md5/<md5[:2]>/...

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ArtifactRef:
        return cls(str(doc.get("file_name") or ""), str(doc["sha256"]), int(doc["size"]),
                   str(doc["dvc_md5"]))


@dataclass(frozen=True)
class GgufFacts:
    """What register read from the GGUF header: `gguf:` in the schema."""

    architecture: str
    parameter_count: int
    context_length: int
    tokenizer_sha256: str
    chat_template_sha256: str | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> GgufFacts:
        template = doc.get("chat_template_sha256")
        return cls(str(doc["architecture"]), int(doc["parameter_count"]),
                   int(doc["context_length"]), str(doc["tokenizer_sha256"]),
                   None if template is None else str(template))


@dataclass(frozen=True)
class VersionRecord:
    """One version file (registry/<name>/<X.Y.Z>.yaml), immutable once merged."""

    name: str
    version: str
    quantization: str
    base_model: str
    parent_version: str | None
    created_at: str
    artifact: ArtifactRef
    gguf: GgufFacts | None  # None: the file has no readable `gguf:` (validate says why)
    inference: dict[str, Any]  # temperature, top_p, max_tokens, prompt_template
    eval_set: str
    eval_sha256: str
    requires: dict[str, Any] = field(default_factory=dict)  # absent in older files
    notes: str = ""

    @property
    def display_id(self) -> str:
        """`{model}-v{X.Y.Z}-{quantization}`, e.g. llama3-instruct-v2.1.0-q4_k_m."""
        return f"{self.name}-v{self.version}-{self.quantization}"

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> VersionRecord:
        parent, gguf = doc.get("parent_version"), doc.get("gguf")
        evals = _mapping(doc.get("eval"))
        return cls(str(doc["name"]), str(doc["version"]), str(doc["quantization"]),
                   str(doc.get("base_model") or ""), None if parent is None else str(parent),
                   str(doc.get("created_at") or ""), ArtifactRef.from_doc(doc["artifact"]),
                   GgufFacts.from_doc(gguf) if isinstance(gguf, dict) else None,
                   _mapping(doc.get("inference")), str(evals.get("set") or ""),
                   str(evals.get("sha256") or ""), _mapping(doc.get("requires")),
                   str(doc.get("notes") or ""))


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
