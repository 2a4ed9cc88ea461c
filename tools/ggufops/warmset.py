"""Which versions must stay in the warm tier: what each environment runs, plus the versions
it ran just before (a rollback goes back to them), `retention.warm` in all per model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufops import history
from ggufops.errors import GitError
from ggufops.registry import VersionRef, environment_models

if TYPE_CHECKING:
    from ggufops.validate import Checker, State


def warm_versions(current: list[str], events: list[history.Deployment], model: str,
                  keep: int) -> list[str]:
    """`current` (primary, canary) first, then earlier versions, newest first, `keep` in all."""
    found: list[str] = []
    for version in current:
        if version not in found:
            found.append(version)
    for event in reversed(events):
        if event.model != model or event.status is not None:
            continue
        for step in (event.to_version, event.from_version):
            if step and step not in found and len(found) < max(keep, len(current)):
                found.append(step)
    return found


def running(entry: dict[str, Any]) -> list[str]:
    canary = (entry.get("canary") or {}).get("version")
    return [str(v) for v in (entry.get("version"), canary) if v is not None]


def warm_set(root: Path, ref: str, env: str, models: dict[str, dict[str, Any]],
             keep: int) -> dict[str, list[str]]:
    """model -> the versions of it `env` needs warm, from its history up to `ref`."""
    try:
        events = history.read_history(root, env, ref, with_metrics=False)
    except GitError:
        events = []
    return {model: warm_versions(running(entry), events, model, keep)
            for model, entry in models.items()}


def holders(root: Path, ref: str, envs: dict[str, dict[str, dict[str, Any]]], keep: int,
            target: VersionRef) -> list[str]:
    """The environments whose warm set holds `target`."""
    return [env for env, models in envs.items() if target.name in models
            and target.version in warm_set(root, ref, env, {target.name: models[target.name]},
                                           keep)[target.name]]


def check_rollback_targets(checker: Checker, state: State) -> None:
    """validate --check-artifacts: every earlier version in a warm set is in the warm tier."""
    from ggufops import artifacts, git, tiers

    if git.toplevel(state.root) is None or git.resolve(state.root, "HEAD") is None:
        return
    policy = tiers.tier_policy(state.policy.data if state.policy else None)
    wanted: dict[VersionRef, tuple[str, Any]] = {}
    for env, doc in state.environments.items():
        models = environment_models(doc.data)
        for model, versions in warm_set(state.root, "HEAD", env, models, policy.warm).items():
            for version in versions[len(running(models[model])):]:
                ref = VersionRef(model, version)
                if ref in state.versions:
                    wanted.setdefault(ref, (env, doc))
    docs = {ref: state.versions[ref].data for ref in wanted}
    for ref, url in artifacts.missing_objects(state.root, docs):
        env, doc = wanted[ref]
        checker.add(doc, ["models", ref.name], f"{env} may roll {ref.name} back to {ref} "
                    f"(retention.warm: {policy.warm}), but its object is not in the warm tier "
                    f"({url}); bring it back with `ggufops restore {ref}`", "artifact")
