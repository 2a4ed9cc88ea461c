"""`ggufops deprecate`, `archive`, `restore`: a status change as a reviewed git change.

Like a deploy, the change is planned as data first (`plan_status_change`: every check,
the appended lines, the commit message), then applied with deploy's machinery: a commit
built on the up-to-date default branch with git plumbing, on a new branch
`lifecycle/<model>-<version>-<status>` (`--push`, `--pr`), or on the default branch itself
(`--direct`). The one file it touches is `registry/<model>/lifecycle.yaml`, appended to;
the version file is never edited.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import git
from ggufops.artifacts import tiers
from ggufops.errors import BranchExists, LifecycleError, UsageError
from ggufops.gitops import deploy, envfile
from ggufops.registry import lifecycle, warmset
from ggufops.registry.registry import VersionRef, display_id, environment_relpath

MODEL = "Model"
VERSION = "Version"
STATUS = "Lifecycle"
REASON = "Reason"

VERBS = {lifecycle.DEPRECATED: "deprecate", lifecycle.ARCHIVED: "archive",
         lifecycle.RESTORED: "restore"}


@dataclass(frozen=True)
class StatusRequest:
    ref: VersionRef
    status: str  # lifecycle.DEPRECATED | ARCHIVED | RESTORED
    reason: str | None = None
    remote: str = "origin"
    default_branch: str = "main"
    direct: bool = False
    push: bool = False
    pr: bool = False
    cold: bool = False  # archive: also move the object to the cold tier


@dataclass
class StatusPlan:
    """The commit a status change makes, computed before anything is written."""

    model: str
    version: str
    display_id: str
    status: str
    stage_before: str
    mode: str
    branch: str
    default_branch: str
    remote: str
    base_ref: str
    base_commit: str
    file: str
    diff: str
    message: str
    push: bool
    pr: bool
    event: lifecycle.Event
    new_text: str = field(default="", repr=False)
    warnings: list[str] = field(default_factory=list)
    tier_move: str | None = None  # tiers.COLD after the commit, tiers.WARM before it
    moved: Any = None  # the tiers.Move, once applied
    artifact: Any = field(default=None, repr=False)  # tiers.TierObject when an object moves

    def as_dict(self) -> dict[str, Any]:
        return {"action": VERBS[self.status], "model": self.model, "version": self.version,
                "display_id": self.display_id, "status": self.status,
                "stage_before": self.stage_before, "event": self.event.as_dict(),
                "mode": self.mode, "branch": self.branch, "default_branch": self.default_branch,
                "remote": self.remote, "base": {"ref": self.base_ref, "commit": self.base_commit},
                "file": self.file, "diff": self.diff, "message": self.message,
                "push": self.push, "pr": self.pr, "warnings": self.warnings,
                "tier_move": self.tier_move,
                "moved": self.moved.as_dict() if self.moved is not None else None}


def plan_status_change(root: Path, request: StatusRequest, *,
                       now: datetime.datetime | None = None) -> StatusPlan:
    """Every check a status change needs, and exactly what it would commit; changes nothing."""
    _check_request(request)
    deploy.require_clean(root)
    base = deploy.resolve_base(root, request.remote, request.default_branch,
                               need_remote=request.push or request.pr)
    ref = request.ref
    doc = deploy.version_doc_at(root, base, ref)
    path = lifecycle.relpath(ref.name)
    raw = git.show_file(root, base.commit, path)
    text = raw.decode() if raw is not None else None
    flags = lifecycle.fold(lifecycle.parse_events(raw, path)).get(ref.version, lifecycle.Flags())
    why = lifecycle.transition_error(flags, request.status, str(ref))
    if why is not None:
        raise LifecycleError(f"cannot {VERBS[request.status]} {ref}: {why} ({path} on "
                             f"{base.ref} {base.commit[:10]})")
    if request.status == lifecycle.ARCHIVED:
        _refuse_if_running(root, base, ref)
    tier_move = _tier_move(root, base, request, doc)
    event = lifecycle.Event(ref.version, request.status, _timestamp(now),
                            _identity(root), _one_line(request.reason))
    new_text = lifecycle.appended(text, ref.name, event)
    direct = request.direct
    branch = request.default_branch if direct else \
        f"lifecycle/{ref.name}-{ref.version}-{VERBS[request.status]}"
    if not direct:
        deploy.require_branch_free(root, branch)
    return StatusPlan(
        model=ref.name, version=ref.version, display_id=display_id(doc), status=request.status,
        stage_before=_stage_before(flags), mode=deploy.DIRECT if direct else deploy.BRANCH,
        branch=branch, default_branch=request.default_branch, remote=request.remote,
        base_ref=base.ref, base_commit=base.commit, file=path,
        diff=envfile.unified_diff(text or "", new_text, path),
        message=format_message(request.status, ref, event.reason), push=request.push or
        request.pr, pr=request.pr, event=event, new_text=new_text,
        tier_move=tier_move, artifact=_artifact(ref, doc) if tier_move else None)


def _artifact(ref: VersionRef, doc: dict[str, Any]) -> Any:
    return tiers.TierObject.of(ref, doc)


def _tier_move(root: Path, base: deploy.Base, request: StatusRequest,
               doc: dict[str, Any]) -> str | None:
    """archive --cold: tiers.COLD (checked); restore: tiers.WARM when only cold holds it."""
    if request.cold and request.status != lifecycle.ARCHIVED:
        raise UsageError("--cold moves an archived version's object: use it with archive")
    policy = tiers.tier_policy(lifecycle.policy_at(root, base.commit))
    if request.status == lifecycle.RESTORED and policy.cold_remote is not None:
        found = tiers.Tiers.from_repo(root, policy).where(_artifact(request.ref, doc))
        return tiers.WARM if found == [tiers.COLD] else None
    if not request.cold:
        return None
    tiers.Tiers.from_repo(root, policy)  # the cold remote must be configured
    envs = {env: envfile.read_entries(git.show_file(root, base.commit,
                                                    environment_relpath(env)) or b"",
                                      environment_relpath(env)) for env in _envs(root, base)}
    holding = warmset.holders(root, base.commit, envs, policy.warm, request.ref)
    if holding:
        raise LifecycleError(f"cannot move {request.ref} to the cold tier: {', '.join(holding)} "
                             f"may roll back to it (retention.warm: {policy.warm}); archive "
                             "it without --cold, or once newer versions have replaced it")
    return tiers.COLD


def _envs(root: Path, base: deploy.Base) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1][: -len(".yaml")]
                  for p in git.ls_tree(root, base.commit, ["environments"])
                  if p.endswith(".yaml"))


def _check_request(request: StatusRequest) -> None:
    if request.status not in VERBS:
        raise UsageError(f"unknown status change {request.status!r}; use one of "
                         f"{', '.join(VERBS)}")
    if request.direct and request.pr:
        raise UsageError("--direct commits on the default branch; it cannot open a pull "
                         "request: drop --pr or --direct")
    if request.status == lifecycle.DEPRECATED and not (request.reason or "").strip():
        raise UsageError("deprecate needs --reason TEXT: say why, for whoever deploys it next")


def _refuse_if_running(root: Path, base: deploy.Base, ref: VersionRef) -> None:
    """An archived version may run nowhere: archive only what no environment runs."""
    for env in _envs(root, base):
        path = environment_relpath(env)
        entry = envfile.read_models(git.show_file(root, base.commit, path) or b"",
                                    path).get(ref.name, {})
        canary = envfile.canary(entry)
        if str(entry.get("version")) == ref.version or (canary and canary[0] == ref.version):
            raise LifecycleError(f"cannot archive {ref}: {env} runs it ({path} on {base.ref}); "
                                 f"deploy another version there first (`ggufops deploy "
                                 f"{ref.name}@X.Y.Z --env {env}`)")


def _stage_before(flags: lifecycle.Flags) -> str:
    if flags.archived:
        return lifecycle.ARCHIVED
    return lifecycle.DEPRECATED if flags.deprecated else "active"


def _timestamp(now: datetime.datetime | None) -> str:
    moment = now or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _identity(root: Path) -> str:
    """Who makes the change: git's author identity (as the commit will record it)."""
    proc = git.run(["var", "GIT_AUTHOR_IDENT"], root, check=False)
    ident = proc.stdout.decode(errors="replace").strip()
    return ident.rsplit(">", 1)[0] + ">" if ">" in ident else (ident or "unknown")


def _one_line(text: str | None) -> str | None:
    return " ".join(text.split()) if text and text.strip() else None


def format_message(status: str, ref: VersionRef, reason: str | None) -> str:
    """`deprecate(llama3-instruct): 1.0.0` and trailers history reads back."""
    trailers = [(MODEL, ref.name), (VERSION, ref.version), (STATUS, status)]
    if reason:
        trailers.insert(0, (REASON, reason))
    body = "\n".join(f"{k}: {v}" for k, v in trailers)
    return f"{VERBS[status]}({ref.name}): {ref.version}\n\n{body}\n"


# --- apply -------------------------------------------------------------------------------

def apply_status_change(root: Path, plan: StatusPlan) -> deploy.Landing:
    """Restore: the object back to warm first. Archive --cold: the commit, then the move."""
    if plan.tier_move == tiers.WARM:
        plan.moved = _move(root, plan)
    landing = _land(root, plan)
    if plan.tier_move == tiers.COLD:
        plan.moved = _move(root, plan)
    return landing


def _move(root: Path, plan: StatusPlan) -> Any:
    policy = tiers.tier_policy(lifecycle.policy_at(root, plan.base_commit))
    where = tiers.Tiers.from_repo(root, policy)
    move = tiers.to_cold if plan.tier_move == tiers.COLD else tiers.to_warm
    return move(where, plan.artifact)


def _land(root: Path, plan: StatusPlan) -> deploy.Landing:
    commit = git.commit_files(root, plan.base_commit, {plan.file: plan.new_text.encode()},
                              plan.message)
    if plan.mode == deploy.DIRECT:
        return deploy.land_on_default_branch(root, commit, plan.base_commit, plan.default_branch,
                                             plan.remote, push=plan.push,
                                             retry_hint=VERBS[plan.status])
    if not git.create_branch(root, plan.branch, commit):
        raise BranchExists(f"branch {plan.branch} appeared in {root} meanwhile; delete it or "
                           "pick it up by hand")
    landing = deploy.Landing(commit, plan.branch)
    if plan.push:
        deploy.push_branch(root, plan.remote, commit, plan.branch)
        landing.pushed = True
    if plan.pr:
        deploy.open_pull_request(root, landing, plan.remote, plan.default_branch,
                                 title=plan.message.splitlines()[0], body=pr_body(plan))
    return landing


def pr_body(plan: StatusPlan) -> str:
    reason = f" Reason: {plan.event.reason}." if plan.event.reason else ""
    return "\n".join([
        f"Marks **{plan.display_id}** as **{plan.status}** (was {plan.stage_before}).{reason}",
        "", "```diff", plan.diff.rstrip(), "```", "",
        "Opened by `ggufops " + VERBS[plan.status] + "`. The version file is unchanged; "
        "the status lives in " + f"`{plan.file}` (append-only)."])


def describe(plan: StatusPlan) -> str:
    where = (f"on {plan.default_branch} directly" if plan.mode == deploy.DIRECT
             else f"on new branch {plan.branch}")
    lines = [plan.message.splitlines()[0],
             f"  {plan.display_id}: {plan.stage_before} -> {plan.status}, {where}, from "
             f"{plan.base_ref} ({plan.base_commit[:10]})"]
    lines += [f"  warning: {w}" for w in plan.warnings]
    lines += ["  " + line for line in plan.diff.rstrip().splitlines()]
    if plan.tier_move is not None:
        lines.append(f"  object: to the {plan.tier_move} tier" + _moved_text(plan.moved))
    return "\n".join(lines)


def _moved_text(moved: Any) -> str:
    if moved is None:
        return " (planned)"
    what = "copied to" if moved.copied else "already verified in"
    removed = f"; removed from {moved.removed_from}" if moved.removed_from else ""
    return f": {what} {moved.destination}, sha256 verified{removed}"
