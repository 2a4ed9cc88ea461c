"""Which versions must stay in the warm tier: what each environment runs, plus the versions
it ran just before (a rollback goes back to them), `retention.warm` in all per model.

"Just before" comes from the environment file's committed states, newest first (one
`git log` and one `git cat-file` per environment), rollbacks and hand edits included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufops import git
from ggufops.errors import GitError
from ggufops.registry.records import EnvEntry, environment_from_data, environment_in
from ggufops.registry.registry import VersionRef, environment_relpath

if TYPE_CHECKING:
    from ggufops.registry.validate import Checker, State

DEFAULT_WARM = 3
MissingObjects = Callable[[Path, dict[VersionRef, dict[str, Any]]],
                          Iterable[tuple[VersionRef, str]]]


def warm_count(policy: Any) -> int:
    section = policy.get("retention") if isinstance(policy, dict) else None
    warm = section.get("warm") if isinstance(section, dict) else None
    return warm if isinstance(warm, int) and warm >= 1 else DEFAULT_WARM


def warm_versions(current: list[str], earlier: list[str], keep: int) -> list[str]:
    """`current` (primary, canary) first, then `earlier` (newest first), `keep` in all."""
    found: list[str] = []
    for version in [*current, *earlier]:
        if version not in found and (len(found) < keep or version in current):
            found.append(version)
    return found


def earlier_versions(root: Path, ref: str, env: str) -> dict[str, list[str]]:
    """model -> the primary versions `env` ran at each commit up to `ref`, newest first."""
    try:
        states = git.file_history(root, ref, environment_relpath(env))
    except GitError:
        return {}
    found: dict[str, list[str]] = {}
    for _commit, raw in states:
        for model, entry in environment_in(raw, env).models.items():
            if entry.version:
                found.setdefault(model, []).append(entry.version)
    return found


def warm_set(root: Path, ref: str, env: str, models: dict[str, EnvEntry],
             keep: int) -> dict[str, list[str]]:
    """model -> the versions of it `env` needs warm, from its history up to `ref`."""
    earlier = earlier_versions(root, ref, env)
    return {model: warm_versions(entry.running(), earlier.get(model, []), keep)
            for model, entry in models.items()}


def holders(root: Path, ref: str, envs: dict[str, dict[str, EnvEntry]], keep: int,
            target: VersionRef) -> list[str]:
    """The environments whose warm set holds `target`."""
    return [env for env, models in envs.items() if target.name in models
            and target.version in warm_set(root, ref, env, {target.name: models[target.name]},
                                           keep)[target.name]]


def check_rollback_targets(checker: Checker, state: State, find_missing: MissingObjects) -> None:
    """validate --check-artifacts: every earlier version in a warm set is in the warm tier."""
    if git.toplevel(state.root) is None or git.resolve(state.root, "HEAD") is None:
        return
    keep = warm_count(state.policy.data if state.policy else None)
    wanted: dict[VersionRef, tuple[str, Any]] = {}
    for env, doc in state.environments.items():
        models = environment_from_data(env, doc.data).models
        for model, versions in warm_set(state.root, "HEAD", env, models, keep).items():
            for version in versions[len(models[model].running()):]:
                ref = VersionRef(model, version)
                if ref in state.versions:
                    wanted.setdefault(ref, (env, doc))
    docs = {ref: state.versions[ref].data for ref in wanted}
    for ref, url in find_missing(state.root, docs):
        env, doc = wanted[ref]
        checker.add(doc, ["models", ref.name], f"{env} may roll {ref.name} back to {ref} "
                    f"(retention.warm: {keep}), but its object is not in the warm tier "
                    f"({url}); bring it back with `ggufops restore {ref}`", "artifact")
