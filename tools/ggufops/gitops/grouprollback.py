"""`ggufops rollback --models a,b` / `--group NAME`: several models back in ONE commit.

For each model the change to undo and the version to restore are found as for a single
rollback (rollback.py: the latest deploy that brought in the version running now); every
target's artifact must be in S3; then all the entries are restored in one edit of the
environment file, so the fleet never runs half of a group rolled back. The commit's body
names every undone commit per model (`This reverts commit SHA (model).`), which is how
`history` marks each of them rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ggufops import yamlio
from ggufops.errors import AlreadyDeployed, NonFastForward, UsageError
from ggufops.gitops import deploy, envfile, history
from ggufops.gitops.rollback import (
    LOCAL,
    MAX_ATTEMPTS,
    PR,
    PUSH,
    RollbackOutcome,
    RollbackPlan,
    RollbackRequest,
    _change_to_undo,
    _check_artifact,
    _previous_version,
    apply_rollback,
)
from ggufops.registry.records import groups_of
from ggufops.registry.registry import VersionRef, environment_relpath


@dataclass(frozen=True)
class Step:
    model: str
    from_version: str
    to_version: str
    rollback_of: str


@dataclass(kw_only=True)
class GroupRollbackPlan(RollbackPlan):
    action: ClassVar[str] = "rollback"
    steps: list[Step]
    group: str | None = None

    def details(self) -> dict[str, Any]:
        return {**super().details(), "group": self.group,
                "models": [vars(s) for s in self.steps]}


def models_of(root: Path, request: RollbackRequest, models: list[str] | None,
              group: str | None) -> tuple[list[str], str | None]:
    """The models to roll back: --models, or the members of --group."""
    if (models is None) == (group is None):
        raise UsageError("pass either --models a,b or --group NAME")
    if models is not None:
        if len(set(models)) < 2:
            raise UsageError("--models needs two or more model names (use --model for one)")
        return sorted(set(models)), None
    base = deploy.resolve_base(root, request.remote, request.default_branch,
                               need_remote=request.mode != LOCAL,
                               remote_tip=request.mode != LOCAL)
    text = deploy.env_text_at(root, base, request.env)
    groups = groups_of(envfile_data(text, environment_relpath(request.env)))
    if group not in groups:
        raise UsageError(f"{request.env} has no release group {group!r} (groups: "
                         f"{', '.join(sorted(groups)) or 'none'}); see `groups:` in "
                         f"{environment_relpath(request.env)}")
    return sorted(groups[str(group)]), group


def envfile_data(text: str, path: str) -> Any:
    return yamlio.parse(text, Path(path)).data


def plan_group_rollback(root: Path, request: RollbackRequest, models: list[str],
                        group: str | None = None) -> GroupRollbackPlan:
    """Every check, per model, and the one commit that rolls them all back."""
    if request.mode not in (LOCAL, PUSH, PR):
        raise UsageError(f"unknown rollback mode {request.mode!r}; use local, push or pr")
    base = deploy.resolve_base(root, request.remote, request.default_branch,
                               need_remote=request.mode != LOCAL,
                               remote_tip=request.mode != LOCAL)
    path = environment_relpath(request.env)
    text = deploy.env_text_at(root, base, request.env)
    entries = envfile.read_models(text, path)
    running = envfile.primary_versions(entries)
    events = history.read_history(root, request.env, base.commit, with_metrics=False)
    canaries = envfile.canary_versions(entries)
    steps = [_step(root, request, base, events, running, canaries=canaries, model=m)
             for m in models]
    new_text = text
    for step in steps:
        new_text = envfile.set_version(new_text, step.model, step.to_version, path)
    what = group or ",".join(models)
    message = _message(request, steps, group)
    branch = (f"rollback/{request.env}/{what.replace(',', '-')}" if request.mode == PR
              else request.default_branch)
    if request.mode == PR:
        deploy.require_branch_free(root, branch)
    return GroupRollbackPlan(
        env=request.env, model=",".join(models),
        from_version=", ".join(f"{s.model} {s.from_version}" for s in steps),
        to_version=", ".join(f"{s.model} {s.to_version}" for s in steps),
        rollback_of=steps[0].rollback_of, rollback_of_subject=None, strategy="restore-entry",
        reason=request.reason, mode=request.mode, branch=branch,
        default_branch=request.default_branch, remote=request.remote, base_ref=base.ref,
        base_commit=base.commit, file=path, diff=envfile.unified_diff(text, new_text, path),
        message=message, artifact_check="ok", new_text=new_text, steps=steps, group=group)


def _step(root: Path, request: RollbackRequest, base: deploy.Base,
          events: list[history.Deployment], running: dict[str, str],
          *, canaries: dict[str, str], model: str) -> Step:
    current = running.get(model)
    if current is None:
        raise UsageError(f"{request.env} does not run {model}; drop it from --models")
    undo = _change_to_undo(events, model, current, canaries.get(model))
    target = _previous_version(undo, request.env, model, current)
    if target == current or undo is None:
        raise AlreadyDeployed(f"{request.env} already runs {model}@{target}")
    ref = VersionRef(model, target)
    _check_artifact(root, ref, deploy.version_doc_at(root, base, ref), request)
    return Step(model, current, target, undo.commit)


def _message(request: RollbackRequest, steps: list[Step], group: str | None) -> str:
    changes = ", ".join(f"{s.model} {s.from_version} -> {s.to_version}" for s in steps)
    label = f"group {group}: " if group else ""
    subject = f"{history.ROLLBACK}({request.env}): {label}{changes}"
    body = "\n".join(f"This reverts commit {s.rollback_of} ({s.model})." for s in steps)
    trailers = [f"{history.ENVIRONMENT}: {request.env}"]
    if request.reason and request.reason.strip():
        trailers.insert(0, f"{history.REASON}: {' '.join(request.reason.split())}")
    if group:
        trailers.append(f"Release-Group: {group}")
    return f"{subject}\n\n{body}\n\n" + "\n".join(trailers) + "\n"


def group_rollback(root: Path, request: RollbackRequest, models: list[str],
                   group: str | None = None) -> RollbackOutcome:
    """Plan and apply; a pushed rollback that loses a race is planned again on the new tip."""
    plan = plan_group_rollback(root, request, models, group)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return RollbackOutcome(plan, apply_rollback(root, plan), attempt)
        except NonFastForward:
            if plan.mode != PUSH or attempt == MAX_ATTEMPTS:
                raise
        plan = plan_group_rollback(root, replace(request), models, group)
    raise AssertionError("unreachable")
