"""Commits that change inference overrides alone: `ggufops config` and their rollback.

`ggufops config --env production --model NAME --set max_tokens=64 --unset system_prompt`
plans a commit like a deploy does (same checks, same branch/--direct/--push/--pr landing),
with the trailers of a deploy whose From-Version equals To-Version plus
`Config-Change: max_tokens 128 -> 64, system_prompt unset`; `history` shows it as kind
`config`. Hosts apply it without loading the model again.

`ggufops rollback` of such a change (rollback.py hands it here) reverts that commit's
change to the file (a three-way merge, as `git revert` does), or restores the overrides
the entry had before it when the revert does not apply cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ggufops import git, yamlio
from ggufops.errors import AlreadyDeployed, NothingToRollBack, UsageError
from ggufops.gitops import configchange, deploy, envfile, history
from ggufops.gitops.history import Deployment
from ggufops.registry import overrides, schemas
from ggufops.registry.records import NO_ENTRY, environment_from_data
from ggufops.registry.registry import VersionRef, display_id, environment_relpath

CONFIG_BRANCH = "config/{env}/{model}-{short}"


@dataclass(frozen=True)
class ConfigRequest:
    env: str
    model: str
    settings: list[tuple[str, Any]]
    unset: list[str]
    remote: str = "origin"
    default_branch: str = "main"
    direct: bool = False
    push: bool = False
    pr: bool = False


@dataclass(kw_only=True)
class ConfigPlan(deploy.DeployPlan):
    action: ClassVar[str] = "config"
    config_change: str
    overrides: dict[str, Any]

    def details(self) -> dict[str, Any]:
        return {**super().details(), "config_change": self.config_change,
                "overrides": self.overrides}


def plan_config(root: Path, request: ConfigRequest) -> ConfigPlan:
    """Every check a config change needs, and exactly what it would commit."""
    if request.direct and request.pr:
        raise UsageError("--direct commits on the default branch; it cannot open a pull "
                         "request: drop --pr or --direct")
    if not request.settings and not request.unset:
        raise UsageError("nothing to change: pass --set KEY=VALUE or --unset KEY")
    push = request.push or request.pr
    deploy.require_clean(root)
    base = deploy.resolve_base(root, request.remote, request.default_branch, need_remote=push)
    path = environment_relpath(request.env)
    text = deploy.env_text_at(root, base, request.env)
    entry = envfile.read_models(text, path).get(request.model)
    if entry is None or "version" not in entry:
        raise UsageError(f"{request.env} does not run {request.model} ({path} on {base.ref}); "
                         "deploy it first")
    version = str(entry["version"])
    before = overrides.of(entry)
    after = configchange.apply_settings(before, request.settings, request.unset)
    if after == before:
        raise AlreadyDeployed(f"{request.env}'s {request.model} already has these overrides "
                              f"({path} on {base.ref}); nothing to change")
    new_text = envfile.set_overrides(text, request.model, after, path)
    _check_valid(root, base, request, new_text, path)
    change = configchange.describe(before, after)
    message = history.format_message(history.CONFIG, request.env, request.model, version,
                                     version, change=f"config {change}", config=change)
    doc = deploy.version_doc_at(root, base, VersionRef(request.model, version))
    branch = request.default_branch if request.direct else CONFIG_BRANCH.format(
        env=request.env, model=request.model, short=overrides.config_digest(after)[:8])
    if not request.direct:
        deploy.require_branch_free(root, branch)
    return ConfigPlan(
        env=request.env, model=request.model, from_version=version, to_version=version,
        display_id=display_id(doc), mode=deploy.DIRECT if request.direct else deploy.BRANCH,
        branch=branch, default_branch=request.default_branch, remote=request.remote,
        base_ref=base.ref, base_commit=base.commit, file=path,
        diff=envfile.unified_diff(text, new_text, path), message=message, push=push,
        pr=request.pr, new_text=new_text, canary=None, from_canary=envfile.canary(entry),
        config_change=change, overrides=after)


def _check_valid(root: Path, base: deploy.Base, request: ConfigRequest, new_text: str,
                 path: str) -> None:
    """The new file must pass the schema and fit the versions it runs (as `validate`)."""
    data = yamlio.parse(new_text, Path(path)).data
    validator = schemas.load_validators(root)["environment"]
    issues = schemas.check(validator, data)
    if issues:
        raise UsageError(f"{path}: {issues[0].message}")
    entry = environment_from_data(request.env, data).models.get(request.model, NO_ENTRY)
    docs = {(request.model, v): deploy.version_doc_at(root, base, VersionRef(request.model, v))
            for v in entry.running()}
    for problem in overrides.problems(request.env, {request.model: entry}, docs):
        raise UsageError(problem.message)


def apply_config(root: Path, plan: ConfigPlan) -> deploy.Landing:
    return deploy.apply_deploy(root, plan)


# --- rollback of a config change --------------------------------------------------------


def is_config_change(event: Deployment) -> bool:
    return event.kind == history.CONFIG


def rollback_text(root: Path, text: str, path: str, model: str,
                  undo: Deployment) -> tuple[str, str]:
    """(the file with `undo`'s override change undone, strategy): its revert when it applies
    cleanly to `model`'s overrides alone, else the overrides the entry had before it."""
    after, before = git.cat_objects(root, [f"{undo.commit}:{path}", f"{undo.commit}^:{path}"])
    if after is None or before is None:
        raise NothingToRollBack(f"commit {undo.commit[:10]} did not change {path}; name the "
                                "change to undo by hand")
    merged = git.merge_file(text.encode(), after, before)
    if merged is not None and _only_overrides_changed(text, merged.decode(), path, model):
        return merged.decode(), "revert"
    previous = overrides.of(envfile.read_models(before, path).get(model, {}))
    return envfile.set_overrides(text, model, previous, path), "restore-entry"


def _only_overrides_changed(old: str, new: str, path: str, model: str) -> bool:
    a, b = envfile.read_models(old, path), envfile.read_models(new, path)
    if set(a) != set(b) or any(a[m] != b[m] for m in a if m != model):
        return False
    strip = ({k: v for k, v in e.items() if k != "overrides"} for e in (a[model], b[model]))
    return next(strip) == next(strip)


def rollback_change(root: Path, text: str, path: str, model: str,
                    undo: Deployment) -> tuple[str, str, str]:
    """(new text, strategy, what changes in words); AlreadyDeployed if nothing would."""
    new_text, strategy = rollback_text(root, text, path, model, undo)
    before = overrides.of(envfile.read_models(text, path).get(model, {}))
    after = overrides.of(envfile.read_models(new_text, path).get(model, {}))
    if before == after:
        raise AlreadyDeployed(f"{model}'s overrides are already as they were before "
                              f"{undo.commit[:10]} ({path}); nothing to roll back")
    return new_text, strategy, configchange.describe(before, after)
