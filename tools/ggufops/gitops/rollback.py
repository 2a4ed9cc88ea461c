"""`ggufops rollback`: put an environment back on the version it ran before.

The change to undo is found in the environment's history (one log walk): the latest
deploy that brought in the version running now, skipping deploys already rolled back.
Its revert is generated for the environment file alone: a three-way merge of the file
(what `git revert` does) when it applies cleanly and touches only that model, else a
commit that restores only that model's version. `--to` picks the version instead; it must
have run in the environment before, or be allowed there by the promotion policy.

When the change to undo started or ramped a canary (the primary version unchanged), the
rollback undoes just that: the canary block goes, or gets its previous weight back.

Before anything is committed, the target version's artifact must exist in the S3 remote:
a rollback must never point the fleet at a deleted file.

`--push` is break-glass: the commit goes straight onto the remote's default branch, built
on its freshly fetched tip. When someone else pushed in between, the rollback is planned
again on the new tip (same target version, every check again) and pushed again, a
bounded number of times.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from ggufops import git
from ggufops.artifacts import dvc as artifacts
from ggufops.errors import (
    AlreadyDeployed,
    ArtifactMissing,
    BranchExists,
    NonFastForward,
    NothingToRollBack,
    PromotionRefused,
    UsageError,
)
from ggufops.gitops import configcommit, deploy, envfile, history, segments
from ggufops.gitops.history import Deployment
from ggufops.registry import lifecycle
from ggufops.registry.registry import VersionRef, environment_relpath

LOCAL = "local"  # commit on the local default branch
PUSH = "push"  # push the commit straight to the remote default branch (break-glass)
PR = "pr"  # push a rollback branch and open a pull request
REVERT = "revert"
RESTORE_ENTRY = "restore-entry"
SKIPPED = "skipped"  # artifact check turned off (--skip-artifact-check)
SEGMENT = "segment"  # a partial rollback: only hosts matching a selector
NOT_NEEDED = "not needed"  # the rollback points at no artifact (a canary removed)
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class RollbackRequest:
    env: str
    model: str | None = None
    to: str | None = None
    reason: str | None = None
    mode: str = LOCAL
    remote: str = "origin"
    default_branch: str = "main"
    skip_artifact_check: bool = False
    selector: dict[str, str] | None = None  # partial: only hosts with these labels


@dataclass(kw_only=True)
class RollbackPlan(deploy.ChangePlan):
    action: ClassVar[str] = "rollback"
    rollback_of: str | None
    rollback_of_subject: str | None
    strategy: str
    reason: str | None
    artifact_check: str
    config_change: str | None = None  # set when the rollback undoes a config-only change

    def details(self) -> dict[str, Any]:
        return {"rollback_of": self.rollback_of, "rollback_of_subject": self.rollback_of_subject,
                "strategy": self.strategy, "reason": self.reason,
                "artifact_check": self.artifact_check, "config_change": self.config_change}



@dataclass
class RollbackOutcome:
    plan: RollbackPlan
    landing: deploy.Landing | None  # None: the remote already ran the target (a race)
    attempts: int = 1
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "attempts": self.attempts, "notes": self.notes,
                "result": self.landing.as_dict() if self.landing else None}


# --- plan --------------------------------------------------------------------------------

def plan_rollback(root: Path, request: RollbackRequest) -> RollbackPlan:
    """Every check a rollback needs, and exactly what it would commit; changes nothing."""
    if request.mode not in (LOCAL, PUSH, PR):
        raise UsageError(f"unknown rollback mode {request.mode!r}; use local, push or pr")
    base = deploy.resolve_base(root, request.remote, request.default_branch,
                               need_remote=request.mode != LOCAL,
                               remote_tip=request.mode != LOCAL)
    path = environment_relpath(request.env)
    text = deploy.env_text_at(root, base, request.env)
    models = envfile.read_models(text, path)
    running = envfile.primary_versions(models)
    events = history.read_history(root, request.env, base.commit, with_metrics=False)
    model = request.model or _latest_model(events, running, request.env)
    current = running.get(model)
    if current is None:
        raise NothingToRollBack(f"{request.env} does not run {model} ({path} on {base.ref}); "
                                "nothing to roll back")
    undo = _change_to_undo(events, model, current, envfile.canary_versions(models).get(model))
    if request.to is None and undo is not None and _is_canary_change(undo) \
            and not request.selector:
        return _plan_canary_rollback(root, request, base, text, undo)
    if request.to is None and undo is not None and configcommit.is_config_change(undo):
        return _plan_config_rollback(root, request, base, text, undo)
    target = request.to or _previous_version(undo, request.env, model, current)
    if target == current:
        raise AlreadyDeployed(f"{request.env} already runs {model}@{target} ({path} on "
                              f"{base.ref} {base.commit[:10]}); nothing to roll back")
    ref = VersionRef(model, target)
    doc = deploy.version_doc_at(root, base, ref)
    # an archived version is never a rollback target
    lifecycle_warnings = lifecycle.rollback_guard(root, base.commit, ref, request.env)
    if request.to is not None:
        _check_target_allowed(root, request.env, ref, events, base)
    artifact_check = _check_artifact(root, ref, doc, request)
    new_text, strategy = _new_text(root, text, path, ref, undo)
    if request.selector:  # a partial rollback: a segment, the entry's version stays
        new_text, strategy = segments.set_segment(text, model, request.selector, target,
                                                  path), SEGMENT
    branch = (f"rollback/{request.env}/{model}-{target}" if request.mode == PR
              else request.default_branch)
    _check_branch_free(root, request, branch)
    message = history.format_message(
        history.ROLLBACK, request.env, model, current, target,
        rollback_of=undo.commit if undo else None, reason=request.reason,
        body=_body(undo, strategy, model, target, request.env, selector=request.selector)
        + _skipped_note(artifact_check))
    warnings = lifecycle_warnings + _skipped_warning(ref, artifact_check)
    return RollbackPlan(
        env=request.env, model=model, from_version=current, to_version=target,
        rollback_of=undo.commit if undo else None,
        rollback_of_subject=undo.subject if undo else None, strategy=strategy,
        reason=request.reason, mode=request.mode, branch=branch,
        default_branch=request.default_branch, remote=request.remote, base_ref=base.ref,
        base_commit=base.commit, file=path, diff=envfile.unified_diff(text, new_text, path),
        message=message, artifact_check=artifact_check, warnings=warnings, new_text=new_text)


def _skipped_note(artifact_check: str) -> str:
    return ("\n\nThe artifact of the restored version was not checked in the S3 remote "
            "(--skip-artifact-check).") if artifact_check == SKIPPED else ""


def _skipped_warning(ref: VersionRef, artifact_check: str) -> list[str]:
    return [f"the artifact of {ref} was NOT checked in the S3 remote (--skip-artifact-check)"
            ] if artifact_check == SKIPPED else []


# --- canary rollbacks ----------------------------------------------------------------------

def _is_canary_change(event: Deployment) -> bool:
    """A change to the model's canary alone (start, ramp), its primary version unchanged."""
    return event.canary_version is not None and event.from_version == event.to_version


def _plan_canary_rollback(root: Path, request: RollbackRequest, base: deploy.Base, text: str,
                          undo: Deployment) -> RollbackPlan:
    """Undo `undo`'s canary change: the canary goes, or gets its previous weight back."""
    env, model, path = request.env, undo.model, environment_relpath(request.env)
    new_text, strategy = _canary_text(root, text, path, model, undo)
    before = envfile.canary(envfile.read_models(text, path).get(model, {}))
    after = envfile.canary(envfile.read_models(new_text, path).get(model, {}))
    primary = str(envfile.read_models(text, path)[model]["version"])
    if before == after or before is None:
        raise AlreadyDeployed(f"{env}'s canary of {model} is already as it was before "
                              f"{undo.commit[:10]} ({path} on {base.ref}); nothing to roll back")
    artifact_check = NOT_NEEDED
    if after is not None:
        ref = VersionRef(model, after[0])
        lifecycle.rollback_guard(root, base.commit, ref, env)  # nor to an archived canary
        artifact_check = _check_artifact(root, ref, deploy.version_doc_at(root, base, ref),
                                         request)
    change = (f"canary {before[0]} removed" if after is None
              else f"canary {before[0]} ({before[1]}%) -> {after[0]} ({after[1]}%)")
    body = (f"This reverts commit {undo.commit}." if strategy == REVERT
            else f"Restores {model}'s canary in {env}, undoing commit {undo.commit}.")
    message = history.format_message(
        history.ROLLBACK, env, model, primary, primary, rollback_of=undo.commit,
        reason=request.reason, body=body + _skipped_note(artifact_check),
        canary=after or (before[0], 0), change=change)
    branch = (f"rollback/{env}/{model}-{before[0]}-canary" if request.mode == PR
              else request.default_branch)
    _check_branch_free(root, request, branch)
    return RollbackPlan(
        env=env, model=model, from_version=primary, to_version=primary,
        rollback_of=undo.commit, rollback_of_subject=undo.subject, strategy=strategy,
        reason=request.reason, mode=request.mode, branch=branch,
        default_branch=request.default_branch, remote=request.remote, base_ref=base.ref,
        base_commit=base.commit, file=path, diff=envfile.unified_diff(text, new_text, path),
        message=message, artifact_check=artifact_check,
        warnings=_skipped_warning(VersionRef(model, after[0]), artifact_check) if after else [],
        new_text=new_text, canary=after or (before[0], 0), from_canary=before)


def _canary_text(root: Path, text: str, path: str, model: str,
                 undo: Deployment) -> tuple[str, str]:
    """The file with `undo`'s canary change undone: its revert if clean, else the canary
    the entry had before that commit."""
    reverted = _revert_file(root, text, path, undo.commit)
    if reverted is not None and envfile.changed_models(text, reverted, path) == [model] \
            and envfile.versions(reverted, path).get(model) == undo.to_version:
        return reverted, REVERT
    (parent,) = git.cat_objects(root, [f"{undo.commit}^:{path}"])
    previous = envfile.canary(envfile.read_models(parent or b"", path).get(model, {}))
    if previous is None:
        return envfile.remove_canary(text, model, path), RESTORE_ENTRY
    return envfile.set_canary(text, model, previous[0], previous[1], path), RESTORE_ENTRY


def _plan_config_rollback(root: Path, request: RollbackRequest, base: deploy.Base, text: str,
                          undo: Deployment) -> RollbackPlan:
    """Undo `undo`'s change of the overrides (no artifact involved: no S3 check)."""
    env, model, path = request.env, undo.model, environment_relpath(request.env)
    new_text, strategy, change = configcommit.rollback_change(root, text, path, model, undo)
    primary = str(envfile.read_models(text, path)[model]["version"])
    body = (f"This reverts commit {undo.commit}." if strategy == REVERT
            else f"Restores {model}'s overrides in {env}, undoing commit {undo.commit}.")
    message = history.format_message(
        history.ROLLBACK, env, model, primary, primary, rollback_of=undo.commit,
        reason=request.reason, body=body, change=f"config {change}", config=change)
    branch = (f"rollback/{env}/{model}-config-{undo.commit[:8]}" if request.mode == PR
              else request.default_branch)
    _check_branch_free(root, request, branch)
    return RollbackPlan(
        env=env, model=model, from_version=primary, to_version=primary,
        rollback_of=undo.commit, rollback_of_subject=undo.subject, strategy=strategy,
        reason=request.reason, mode=request.mode, branch=branch,
        default_branch=request.default_branch, remote=request.remote, base_ref=base.ref,
        base_commit=base.commit, file=path, diff=envfile.unified_diff(text, new_text, path),
        message=message, artifact_check=NOT_NEEDED, new_text=new_text, config_change=change)


def _check_branch_free(root: Path, request: RollbackRequest, branch: str) -> None:
    if request.mode == PR:
        deploy.require_branch_free(root, branch)


def _latest_model(events: list[Deployment], running: dict[str, str], env: str) -> str:
    if len(running) == 1:
        return next(iter(running))
    for event in reversed(events):
        if event.model in running:
            return event.model
    if not running:
        raise NothingToRollBack(f"{env} runs no model; nothing to roll back")
    raise UsageError(f"{env} runs several models ({', '.join(sorted(running))}) and its "
                     "history names none of them; pick one with --model")


def _change_to_undo(events: list[Deployment], model: str, current: str,
                    canary: str | None = None) -> Deployment | None:
    """The latest change that brought `current` in and has not been rolled back yet
    (read_history has already marked what later rollbacks undid). Rollbacks, and a canary
    analysis's abort (a rollback too: it names Rollback-Of), are never undone; nor is a
    change of a canary the entry no longer has (`canary`: its canary's version now), such
    as the steps of an aborted one."""
    for event in reversed(events):
        if event.model != model or event.kind in (history.ROLLBACK, history.ABORT) \
                or event.rollback_of or event.rolled_back:
            continue
        if _is_canary_change(event) and event.canary_version != canary:
            continue
        if event.to_version == current:
            return event
    return None


def _previous_version(undo: Deployment | None, env: str, model: str, current: str) -> str:
    if undo is None:
        raise NothingToRollBack(f"the history of {env} does not show how {model}@{current} "
                                "got there; name the version to restore with --to X.Y.Z")
    if undo.from_version is None:
        raise NothingToRollBack(f"{model}@{current} is the first version {env} ran (commit "
                                f"{undo.commit[:10]}); there is no earlier one: name one "
                                "with --to, or remove the model with a pull request")
    return undo.from_version


def _check_target_allowed(root: Path, env: str, ref: VersionRef, events: list[Deployment],
                          base: deploy.Base) -> None:
    if ref.version in history.versions_ever(events, ref.name):
        return
    try:
        deploy.promotion_check(root, env, ref, base)
    except PromotionRefused as e:
        raise PromotionRefused(f"{ref} never ran in {env} and {e}") from None


def _check_artifact(root: Path, ref: VersionRef, doc: dict[str, Any],
                    request: RollbackRequest) -> str:
    if request.skip_artifact_check:
        return SKIPPED

    missing = artifacts.missing_objects(root, {ref: doc})
    if missing:
        key = missing[0][1]
        raise ArtifactMissing(
            f"refusing to roll {request.env} back to {ref}: its artifact (object {key}) is "
            "missing from the S3 remote; push it again (`dvc push` from a machine that has "
            "it) or pick another version with --to")
    return "ok"


def _new_text(root: Path, text: str, path: str, ref: VersionRef,
              undo: Deployment | None) -> tuple[str, str]:
    model, target = ref.name, ref.version
    if undo is not None and undo.from_version == target:
        reverted = _revert_file(root, text, path, undo.commit)
        if reverted is not None and envfile.changed_models(text, reverted, path) == [model] \
                and envfile.versions(reverted, path).get(model) == target:
            return reverted, REVERT
    return envfile.set_version(text, model, target, path), RESTORE_ENTRY


def _revert_file(root: Path, text: str, path: str, commit: str) -> str | None:
    """The environment file with `commit`'s change to it undone (three-way merge)."""
    after, before = git.cat_objects(root, [f"{commit}:{path}", f"{commit}^:{path}"])
    if after is None or before is None:
        return None
    merged = git.merge_file(text.encode(), after, before)
    return merged.decode() if merged is not None else None


def _body(undo: Deployment | None, strategy: str, model: str, target: str, env: str, *,
          selector: dict[str, str] | None = None) -> str:
    if selector:
        return (f"Restores {model} {target} in {env} only on the hosts labelled "
                f"{segments.selector_text(selector)} (a segment); the others keep their version.")
    if undo is None:
        return f"Restores {model} {target} in {env}."
    if strategy == REVERT:
        return f"This reverts commit {undo.commit}."
    return f"Restores {model} {target} in {env}, undoing commit {undo.commit}."


# --- apply -------------------------------------------------------------------------------

def apply_rollback(root: Path, plan: RollbackPlan) -> deploy.Landing:
    commit = git.commit_files(root, plan.base_commit, {plan.file: plan.new_text.encode()},
                              plan.message)
    if plan.mode == PR:
        if not git.create_branch(root, plan.branch, commit):
            raise BranchExists(f"branch {plan.branch} appeared in {root} during the rollback; "
                               "delete it or pick it up by hand")
        landing = deploy.Landing(commit, plan.branch)
        deploy.push_branch(root, plan.remote, commit, plan.branch)
        landing.pushed = True
        deploy.open_pull_request(root, landing, plan.remote, plan.default_branch,
                                 title=plan.message.splitlines()[0], body=pr_body(plan))
        return landing
    return deploy.land_on_default_branch(root, commit, plan.base_commit, plan.default_branch,
                                         plan.remote, push=plan.mode == PUSH,
                                         retry_hint="rollback")


def rollback(root: Path, request: RollbackRequest, *,
             max_attempts: int = MAX_ATTEMPTS) -> RollbackOutcome:
    """Plan and apply; a pushed rollback that loses a race is re-planned and pushed again."""
    plan = plan_rollback(root, request)
    for attempt in range(1, max_attempts + 1):
        try:
            return RollbackOutcome(plan, apply_rollback(root, plan), attempt)
        except NonFastForward:
            if plan.mode != PUSH or attempt == max_attempts:
                raise
        # Someone pushed in between: rebase = plan again on the new tip, same target.
        undo_again = plan.canary is not None or plan.config_change is not None
        retry = replace(request, model=plan.model, to=None if undo_again else plan.to_version)
        try:
            again = plan_rollback(root, retry)
        except AlreadyDeployed:
            again = None
        if again is None or (undo_again and again.rollback_of != plan.rollback_of):
            return RollbackOutcome(plan, None, attempt + 1, [_already_note(request, plan)])
        plan = again
    raise AssertionError("unreachable")


def _already_note(request: RollbackRequest, plan: RollbackPlan) -> str:
    where = f"{request.remote}/{request.default_branch}"
    what = (f"{plan.model}'s canary change {plan.rollback_of[:10]} is already undone there"
            if plan.canary is not None and plan.rollback_of
            else f"already runs {plan.model}@{plan.to_version}")
    return f"{where} {what} (someone else rolled it back); nothing was pushed"


def pr_body(plan: RollbackPlan) -> str:
    change = plan.message.splitlines()[0].split(f"{plan.model} ", 1)[-1]
    lines = [f"Rolls back **{plan.model}**'s canary in **{plan.env}**: {change}."
             if plan.canary is not None else
             f"Rolls **{plan.model}** in **{plan.env}** back from {plan.from_version} to "
             f"**{plan.to_version}**."]
    if plan.rollback_of:
        lines.append(f"Undoes {plan.rollback_of} ({plan.rollback_of_subject}).")
    if plan.reason:
        lines.append(f"Reason: {plan.reason}")
    lines += ["", "```diff", plan.diff.rstrip(), "```", "", "Opened by `ggufops rollback`."]
    return "\n".join(lines)


def describe(plan: RollbackPlan) -> str:
    where = {LOCAL: f"on local {plan.default_branch}",
             PUSH: f"pushed straight to {plan.remote}/{plan.default_branch}",
             PR: f"on new branch {plan.branch} (pull request)"}[plan.mode]
    lines = [plan.message.splitlines()[0],
             f"  {where}, from {plan.base_ref} ({plan.base_commit[:10]}); strategy "
             f"{plan.strategy}; artifact check {plan.artifact_check}"]
    if plan.rollback_of:
        lines.append(f"  undoes {plan.rollback_of[:10]} {plan.rollback_of_subject}")
    lines += [f"  warning: {w}" for w in plan.warnings]
    lines += ["  " + line for line in plan.diff.rstrip().splitlines()]
    return "\n".join(lines)
