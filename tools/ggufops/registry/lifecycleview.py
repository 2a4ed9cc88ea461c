"""Every version's lifecycle stage, for `list` and `show`: recorded decisions plus where it ran.

Where a version has run comes from the environment files in the working tree and every
committed state of them (one `git log` per environment); outside a git repository only
the working tree counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import git
from ggufops.errors import GitError
from ggufops.registry import lifecycle
from ggufops.registry.records import environment_in
from ggufops.registry.registry import Registry, VersionRef


@dataclass
class VersionStage:
    stage: str
    environments_ever: list[str] = field(default_factory=list)
    history: list[lifecycle.Event] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "environments_ever": self.environments_ever,
                "lifecycle": [e.as_dict() for e in self.history]}


def promotion_order(registry: Registry) -> list[str]:
    promotion = registry.policy().get("promotion")
    order = promotion.get("order") if isinstance(promotion, dict) else None
    return [str(e) for e in order] if isinstance(order, list) else []


def stages(registry: Registry, refs: list[VersionRef]) -> dict[VersionRef, VersionStage]:
    """The stage of each of `refs` (lifecycle files read once per model)."""
    ever = environments_ever(registry)
    order = promotion_order(registry)
    folded: dict[str, dict[str, lifecycle.Flags]] = {}
    result: dict[VersionRef, VersionStage] = {}
    for ref in refs:
        if ref.name not in folded:
            folded[ref.name] = lifecycle.fold(lifecycle.read_events(registry.root, ref.name))
        flags = folded[ref.name].get(ref.version)
        envs = sorted(ever.get((ref.name, ref.version), set()))
        result[ref] = VersionStage(lifecycle.stage(flags, envs, order), envs,
                                   list(flags.history) if flags else [])
    return result


def environments_ever(registry: Registry) -> dict[tuple[str, str], set[str]]:
    """(model, version) -> every environment that ran it as primary or canary."""
    seen: dict[tuple[str, str], set[str]] = {}
    for env in registry.environments():
        states = [registry.environment_record(env).models]
        states += [environment_in(raw, env).models for raw in _committed(registry.root, env)]
        for models in states:
            for model, entry in models.items():
                for version in entry.running():
                    seen.setdefault((model, version), set()).add(env)
    return seen


def _committed(root: Path, env: str) -> list[bytes]:
    if git.toplevel(root) is None or git.resolve(root, "HEAD") is None:
        return []
    try:
        return [raw for _, raw in git.file_history(root, "HEAD", f"environments/{env}.yaml")]
    except GitError:
        return []
