"""What a commit asks an inference host to run: the agent's plan, read from git.

The registry at a commit is exported from the agent's bare mirror (registry/,
environments/ and .dvc/config only, with two git processes), validated like CI validates
it, and turned into one Target per model: the version, its artifact (sha256, size, DVC md5)
and the inference config with the environment's overrides, and the canary (`canary:
{version, weight}`) as a Target of its own with a weight. An invalid state is refused.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ggufops import git
from ggufops.errors import InvalidDesiredState
from ggufops.fleet import rollout
from ggufops.registry import overrides, schemas, validate
from ggufops.registry.envread import read_environment
from ggufops.registry.records import EnvEntry
from ggufops.registry.registry import (
    ENVIRONMENTS_DIR,
    REGISTRY_DIR,
    Registry,
)
from ggufops.serve.loadrequest import LoadRequest

DEFAULT_KEEP = 3
EXPORTED_PATHS = (REGISTRY_DIR, ENVIRONMENTS_DIR, ".dvc/config")


@dataclass(frozen=True)
class Target:
    """One model version the environment asks for, as the agent needs it.

    A primary may carry its `canary`: a Target whose `weight` (0-100) is set."""

    name: str
    version: str
    sha256: str
    dvc_md5: str
    size: int
    display_id: str
    inference: dict[str, Any]
    weight: int | None = None  # set on a canary (and a shadow: its percent)
    canary: Target | None = field(default=None)
    shadow: Target | None = field(default=None)  # `shadow: {version, percent}`
    role: str = "canary"  # what a Target with a weight is: canary or shadow

    def load_body(self) -> dict[str, Any]:
        """The body of POST /admin/models for this model (primary, canary or shadow)."""
        return self.request().to_json()

    def request(self) -> LoadRequest:
        """The server's load request for this model: its role's when `weight` is set."""
        if self.weight is None:
            return LoadRequest(self.name, self.version, self.sha256, self.display_id,
                               self.inference)
        return LoadRequest(self.name, self.version, self.sha256, self.display_id,
                           self.inference, role=self.role, weight=self.weight)

    def load_request(self) -> dict[str, Any]:
        """What the apply log records: the load body, and the canary's."""
        body = self.load_body()
        if self.canary is not None:
            body["canary"] = self.canary.load_body()
        if self.shadow is not None:
            body["shadow"] = self.shadow.load_body()
        return body

    def artifacts(self) -> list[Target]:
        """The primary and its canary: what must be in the store."""
        return [self] + [t for t in (self.canary, self.shadow) if t is not None]

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {"version": self.version, "sha256": self.sha256,
                                  "display_id": self.display_id}
        if self.weight is not None:
            result["weight"] = self.weight
        if self.canary is not None:
            result["canary"] = self.canary.summary()
        if self.shadow is not None:
            result["shadow"] = self.shadow.summary()
        return result

    def served_by(self, entry: dict[str, Any] | None) -> bool:
        """Does this /v1/models entry serve the version, and exactly the canary asked for?"""
        return entry is not None and self.primary_served_by(entry) \
            and self.canary_served_by(entry) and self.shadow_served_by(entry)

    def shadow_served_by(self, entry: dict[str, Any]) -> bool:
        have, want = entry.get("shadow"), self.shadow
        if want is None:
            return have is None
        return isinstance(have, dict) and (have.get("version"), have.get("sha256"),
                                           have.get("weight")) == (
            want.version, want.sha256, want.weight) and want.config_served_by(have)

    def primary_served_by(self, entry: dict[str, Any]) -> bool:
        return entry.get("version") == self.version and entry.get("sha256") == self.sha256 \
            and self.config_served_by(entry)

    def config_served_by(self, entry: dict[str, Any]) -> bool:
        """Does the server run this inference config? (a server that does not say: yes)"""
        have = entry.get("config_sha256")
        return have is None or have == overrides.config_digest(self.inference)

    def canary_served_by(self, entry: dict[str, Any]) -> bool:
        have = entry.get("canary")
        if self.canary is None:
            return have is None
        c = self.canary
        return isinstance(have, dict) and (have.get("version"), have.get("sha256"),
                                           have.get("weight")) == (c.version, c.sha256, c.weight) \
            and c.config_served_by(have)

    @classmethod
    def from_request(cls, name: str, want: dict[str, Any]) -> Target:
        """A target from a load request recorded in the apply log."""
        canary, shadow = want.get("canary"), want.get("shadow")
        weight = want.get("weight")
        return cls(name, str(want.get("version")), str(want.get("sha256")), "", 0,
                   str(want.get("display_id") or f"{name}-v{want.get('version')}"),
                   dict(want.get("inference") or {}),
                   weight=weight if isinstance(weight, int) else None,
                   canary=cls.from_request(name, canary) if isinstance(canary, dict) else None,
                   shadow=cls.from_request(name, shadow) if isinstance(shadow, dict) else None,
                   role=str(want.get("role") or "canary"))


@dataclass(frozen=True)
class Plan:
    commit: str
    tree: Path
    targets: dict[str, Target]
    keep: int
    groups: dict[str, list[str]] = field(default_factory=dict)  # release groups
    waves: list[dict[str, str]] = field(default_factory=list)  # the rollout's, in order

    def summary(self) -> dict[str, Any]:
        return {name: t.summary() for name, t in sorted(self.targets.items())}

    def requests(self) -> dict[str, dict[str, Any]]:
        return {name: t.load_request() for name, t in sorted(self.targets.items())}

    def artifacts(self) -> list[Target]:
        """Every primary and canary, one per sha256."""
        unique: dict[str, Target] = {}
        for t in self.targets.values():
            for a in t.artifacts():
                unique.setdefault(a.sha256, a)
        return list(unique.values())


def export_tree(mirror: Path, commit: str, trees_dir: Path) -> Path:
    """registry/, environments/ and .dvc/config at `commit`, as files under trees_dir/<commit>."""
    dest = trees_dir / commit
    if dest.is_dir():
        return dest
    files = git.read_tree_files(mirror, commit, EXPORTED_PATHS)
    tmp = trees_dir / f".tmp-{commit}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, content in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts:
            raise InvalidDesiredState(f"commit {commit[:12]} holds an unsafe path {rel!r}")
        path = tmp.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.replace(dest)
    return dest


def prune_trees(trees_dir: Path, keep: set[str]) -> None:
    for path in trees_dir.iterdir() if trees_dir.is_dir() else ():
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def plan_from_tree(tree: Path, commit: str, env: str, keep: int | None,
                   labels: dict[str, str] | None = None) -> Plan:
    """Validate the exported tree and read the environment's models; refuse invalid states."""
    problems = validate.validate_repo(tree)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidDesiredState(f"commit {commit[:12]} is invalid: {problems[0]}{more}; "
                                  "not applied: push a fixed commit")
    registry = Registry(tree)
    if not registry.environment_file(env).is_file():
        raise InvalidDesiredState(f"commit {commit[:12]} has no {ENVIRONMENTS_DIR}/{env}.yaml; "
                                  "check --env or add the environment")
    environment = read_environment(registry.environment_file(env),
                                   schemas.load_validators(tree)["environment"])
    targets = {name: _target(registry, name, entry, labels or {})
               for name, entry in environment.models.items()}
    return Plan(commit, tree, targets, keep or _policy_keep(registry), environment.groups,
                environment.waves)


def _target(registry: Registry, name: str, entry: EnvEntry,
            labels: dict[str, str]) -> Target:
    spec = entry.canary
    canary = None
    if spec is not None:
        canary = _version_target(registry, name, spec.version, entry, weight=spec.weight)
    version = rollout.version_for(entry, labels)  # a segment's version for this host
    primary = _version_target(registry, name, version, entry, canary=canary)
    if entry.shadow is None:
        return primary
    shadow = _version_target(registry, name, entry.shadow.version, entry,
                             weight=entry.shadow.percent)
    return replace(primary, shadow=replace(shadow, role="shadow"))


def _version_target(registry: Registry, name: str, version: str, entry: EnvEntry,
                    *, canary: Target | None = None, weight: int | None = None) -> Target:
    record = registry.load_record(name, version)
    art = record.artifact
    inference = {**record.inference, **entry.overrides}
    return Target(name, record.version, art.sha256, art.dvc_md5, art.size,
                  record.display_id, inference, weight, canary)


def _policy_keep(registry: Registry) -> int:
    value = (registry.policy().get("retention") or {}).get("agent_keep_last")
    return max(2, int(value)) if isinstance(value, int) else DEFAULT_KEEP
