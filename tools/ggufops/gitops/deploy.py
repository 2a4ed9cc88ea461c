"""`ggufops deploy`: change which version an environment runs, as a reviewed git change.

A deploy is planned as data first (`plan_deploy`: every check, the exact file diff, the
commit message, the branch), then applied (`apply_deploy`). The commit is built with git
plumbing on the up-to-date default branch, so the user's checkout is never switched:
by default it goes on a new branch `deploy/<env>/<model>-<version>` (pushed with --push,
opened as a pull request with --pr); with --direct it goes on the default branch itself
(repositories without pull requests, the demo).

With a canary weight (`--canary PERCENT`) the deploy sets the entry's `canary:` block
instead of its `version:` (branch `deploy/<env>/<model>-<version>-canary-<weight>`); run
again with another weight to ramp it, deploy the version plainly to promote it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ggufops import git, yamlio
from ggufops.errors import (
    AlreadyDeployed,
    BranchBehind,
    BranchExists,
    DirtyWorkTree,
    GitError,
    MissingRemote,
    NonFastForward,
    PromotionRefused,
    PushRejected,
    UnknownEnvironment,
    UnknownVersion,
    UsageError,
)
from ggufops.gitops import envfile, github, history
from ggufops.registry import canaryplan, lifecycle
from ggufops.registry.records import CanaryAnalysis, EnvEntry
from ggufops.registry.registry import (
    Registry,
    VersionRef,
    display_id,
    environment_relpath,
    version_relpath,
)

BRANCH = "branch"  # the commit goes on a new deploy branch
DIRECT = "direct"  # the commit goes on the default branch itself


@dataclass(frozen=True)
class Base:
    """The commit a deploy or rollback builds on, and how it relates to the remote."""

    ref: str  # what it was read from: "main" or "origin/main"
    commit: str
    remote_commit: str | None  # the remote's tip after fetching (None: no remote)
    ahead: int = 0  # local commits the remote does not have yet


@dataclass(kw_only=True)
class ChangePlan:
    """A commit to an environment file, computed before anything is written (--dry-run
    prints it; applying it writes exactly this). Deploys and rollbacks are both one."""

    action: ClassVar[str] = ""
    env: str
    model: str
    from_version: str | None
    to_version: str
    mode: str
    branch: str
    default_branch: str
    remote: str
    base_ref: str
    base_commit: str
    file: str
    diff: str
    message: str
    warnings: list[str] = field(default_factory=list)
    new_text: str = field(default="", repr=False)
    canary: history.Canary | None = None  # the canary after the change (weight 0: removed)
    from_canary: history.Canary | None = None  # the canary the entry had before

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "env": self.env, "model": self.model,
            "from": self.from_version, "to": self.to_version,
            "canary": canary_dict(self.canary), "from_canary": canary_dict(self.from_canary),
            **self.details(),
            "mode": self.mode, "branch": self.branch, "default_branch": self.default_branch,
            "remote": self.remote, "base": {"ref": self.base_ref, "commit": self.base_commit},
            "file": self.file, "diff": self.diff, "message": self.message,
            "warnings": self.warnings,
        }

    def details(self) -> dict[str, Any]:
        """What only this kind of change has, for as_dict()."""
        return {}


def canary_dict(canary: history.Canary | None) -> dict[str, Any] | None:
    return {"version": canary[0], "weight": canary[1]} if canary else None


@dataclass(kw_only=True)
class DeployPlan(ChangePlan):
    action: ClassVar[str] = "deploy"
    display_id: str
    push: bool
    pr: bool

    def details(self) -> dict[str, Any]:
        return {"display_id": self.display_id, "push": self.push, "pr": self.pr}


@dataclass
class Landing:
    """What applying a plan did: the commit, where it went, the pull request."""

    commit: str
    branch: str
    pushed: bool = False
    pull_request: github.PullRequest | None = None
    compare_url: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        pr = self.pull_request
        return {"commit": self.commit, "branch": self.branch, "pushed": self.pushed,
                "pull_request": pr.as_dict() if pr else None, "compare_url": self.compare_url,
                "notes": self.notes}



# --- checks shared with rollback --------------------------------------------------------

def require_branch_free(root: Path, branch: str) -> None:
    """BranchExists when a local branch of that name is already there."""
    if git.resolve(root, f"refs/heads/{branch}") is not None:
        raise BranchExists(f"branch {branch} already exists in {root}; delete it (`git branch "
                           f"-D {branch}`) or push and review it")


def require_clean(root: Path) -> None:
    dirty = git.dirty_paths(root)
    if dirty:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise DirtyWorkTree(f"{root} has uncommitted changes ({shown}); commit or stash them "
                            "and run the command again")


def resolve_base(root: Path, remote: str, branch: str, *, need_remote: bool,
                 remote_tip: bool = False) -> Base:
    """Fetch `branch` and pick the commit to build on.

    The local branch must not be behind the remote's. With `remote_tip`, the remote's tip
    itself is the base (a break-glass rollback does not wait for anyone's checkout).
    """
    has_remote = git.remote_url(root, remote) is not None
    if not has_remote and need_remote:
        raise MissingRemote(f"no git remote {remote!r} in {root}; add it with `git remote add "
                            f"{remote} URL` or name another with --remote")
    if has_remote:
        git.fetch_branch(root, remote, branch)
    local = git.resolve(root, f"refs/heads/{branch}")
    upstream = git.resolve(root, f"refs/remotes/{remote}/{branch}") if has_remote else None
    if upstream is not None and (remote_tip or local is None):
        return Base(f"{remote}/{branch}", upstream, upstream)
    if local is None:
        raise GitError(f"branch {branch!r} does not exist in {root}; name the default branch "
                       "with --branch")
    ahead = 0
    if upstream is not None:
        ahead, behind = git.ahead_behind(root, local, upstream)
        if behind:
            raise BranchBehind(
                f"local {branch} is {behind} commit(s) behind {remote}/{branch}; update it "
                f"(`git switch {branch} && git pull --ff-only {remote} {branch}`) and run the "
                "command again")
    return Base(branch, local, upstream, ahead)


def env_text_at(root: Path, base: Base, env: str) -> str:
    path = environment_relpath(env)
    raw = git.show_file(root, base.commit, path)
    if raw is None:
        known = sorted(p.rsplit("/", 1)[-1][: -len(".yaml")]
                       for p in git.ls_tree(root, base.commit, ["environments"])
                       if p.endswith(".yaml"))
        raise UnknownEnvironment(f"no environment {env!r}: {path} does not exist on "
                                 f"{base.ref} ({base.commit[:10]}); known: "
                                 f"{', '.join(known) or 'none'}")
    return raw.decode()


def version_doc_at(root: Path, base: Base, ref: VersionRef) -> dict[str, Any]:
    """The version file as committed on the base (a deploy must not name an unmerged one)."""
    path = version_relpath(ref.name, ref.version)
    raw = git.show_file(root, base.commit, path)
    if raw is None:
        if (root / path).is_file():
            raise UnknownVersion(f"{ref} is registered in the working tree ({path}) but not on "
                                 f"{base.ref}; merge its registration first")
        Registry(root).load_ref(ref)  # raises the registry's own "not registered" message
        raise UnknownVersion(f"{ref} is not registered on {base.ref} (no {path})")
    data = yamlio.parse(raw, Path(path)).data
    return data if isinstance(data, dict) else {}


def promotion_check(root: Path, env: str, ref: VersionRef, base: Base, *,
                    canary: bool = False) -> None:
    from ggufops.registry import validate  # jsonschema: imported only when a check needs it

    reason = validate.promotion_allowed(root, env, ref.name, ref.version, base.commit,
                                        canary=canary)
    if reason is not None:
        raise PromotionRefused(reason)


# --- plan --------------------------------------------------------------------------------

def plan_deploy(root: Path, ref: VersionRef, env: str, *, remote: str = "origin",
                default_branch: str = "main", direct: bool = False, push: bool = False,
                pr: bool = False, canary: int | None = None,
                analysis: CanaryAnalysis | None = None) -> DeployPlan:
    """Every check a deploy needs, and exactly what it would commit; changes nothing.

    `canary` (a weight, 1-99 percent) starts or ramps a canary of `ref` instead;
    `analysis` gives it a plan the agents walk (canary analysis).
    """
    if direct and pr:
        raise UsageError("--direct commits on the default branch; it cannot open a pull "
                         "request: drop --pr or --direct")
    if canary is not None and not 1 <= canary <= 99:
        raise UsageError(f"--canary {canary}: the weight is a percent of traffic from 1 to "
                         "99 (deploy the version without --canary to send it all)")
    _check_analysis(canary, analysis)
    push = push or pr
    require_clean(root)
    base = resolve_base(root, remote, default_branch, need_remote=push)
    doc = version_doc_at(root, base, ref)
    path = environment_relpath(env)
    text = env_text_at(root, base, env)
    entry = envfile.read_models(text, path).get(ref.name, {})
    current = str(entry["version"]) if "version" in entry else None
    where = f"({path} on {base.ref} {base.commit[:10]})"
    if canary is None:
        change = _plain_change(text, ref, path=path, env=env, current=current, where=where)
    else:
        change = _canary_change(text, ref, path=path, env=env, entry=entry, weight=canary,
                                where=where, analysis=analysis)
    promotion_check(root, env, ref, base, canary=canary is not None)
    lifecycle_warnings = lifecycle.deploy_guard(root, base.commit, ref, env)
    branch = default_branch if direct else f"deploy/{env}/{ref.name}-{ref.version}" + (
        f"-canary-{canary}" if canary is not None else "")
    if not direct:
        require_branch_free(root, branch)
    warnings = list(lifecycle_warnings)
    if base.ahead and not direct:
        warnings.append(f"local {default_branch} has {base.ahead} commit(s) not on {remote}; "
                        "the deploy branch carries them too")
    warnings.extend(change.warnings)
    return DeployPlan(
        env=env, model=ref.name, from_version=current, to_version=change.to_version,
        display_id=display_id(doc), mode=DIRECT if direct else BRANCH, branch=branch,
        default_branch=default_branch, remote=remote, base_ref=base.ref,
        base_commit=base.commit, file=path,
        diff=envfile.unified_diff(text, change.new_text, path), message=change.message,
        push=push, pr=pr, warnings=warnings, new_text=change.new_text, canary=change.canary,
        from_canary=envfile.canary(entry))


@dataclass(frozen=True)
class _Change:
    to_version: str
    new_text: str
    message: str
    canary: history.Canary | None = None
    warnings: tuple[str, ...] = ()


def _plain_change(text: str, ref: VersionRef, *, path: str, env: str, current: str | None,
                  where: str) -> _Change:
    if current == ref.version:
        raise AlreadyDeployed(f"{env} already runs {ref} {where}; nothing to deploy")
    return _Change(ref.version, envfile.set_version(text, ref.name, ref.version, path),
                   history.format_message(history.DEPLOY, env, ref.name, current, ref.version))


def _check_analysis(canary: int | None, analysis: CanaryAnalysis | None) -> None:
    if analysis is None:
        return
    if canary is None:
        raise UsageError("--steps and --analysis-interval plan a canary: add --canary PERCENT "
                         "(the first step)")
    if analysis.steps[0] != canary:
        raise UsageError(f"--steps {','.join(map(str, analysis.steps))}: the first step must "
                         f"be the --canary weight {canary}")
    problems = canaryplan.plan_problems(canary, analysis)
    if problems:
        option = "--analysis-interval" if problems[0][0] == "interval" else "--steps"
        raise UsageError(f"{option}: {problems[0][1]}")


def _canary_change(text: str, ref: VersionRef, *, path: str, env: str,
                   entry: dict[str, Any], weight: int, where: str,
                   analysis: CanaryAnalysis | None = None) -> _Change:
    current = str(entry["version"]) if "version" in entry else None
    if current is None:
        raise PromotionRefused(f"{env} runs no version of {ref.name} {where}, so it cannot get a "
                         f"canary: deploy it first (`ggufops deploy {ref} --env {env}`)")
    if current == ref.version:
        raise AlreadyDeployed(f"{env} already runs {ref} as its primary version {where}; a "
                              "canary of it would change nothing")
    if envfile.canary(entry) == (ref.version, weight):
        raise AlreadyDeployed(f"{env} already runs {ref} as a canary at {weight}% {where}; "
                              "nothing to deploy (pick another --canary weight to ramp it)")
    canary = (ref.version, weight)
    dropped = _dropped_plan(entry, ref.version, weight) if analysis is None else None
    body = "" if analysis is None else (
        f"Canary analysis: steps {','.join(map(str, analysis.steps))}, one every "
        f"{analysis.interval:g} s; the agents step it up, promote it or abort it.")
    message = history.format_message(
        history.DEPLOY, env, ref.name, current, current, canary=canary,
        change=f"canary {ref.version} ({weight}%)", body=body or dropped or "")
    new_text = envfile.set_canary(text, ref.name, ref.version, weight, path,
                                  analysis=None if analysis is None else analysis.as_doc(),
                                  drop_analysis=dropped is not None)
    return _Change(current, new_text, message, canary, (dropped,) if dropped else ())


def _dropped_plan(entry: dict[str, Any], version: str, weight: int) -> str | None:
    """Why the entry's analysis plan goes with a `--canary` ramp without --steps (None: it
    stays, because the version is the same and the weight one of its steps)."""
    found = EnvEntry.from_doc(entry).canary
    if found is None or found.analysis is None:
        return None
    steps = ",".join(map(str, found.analysis.steps))
    if found.version != version:
        why = f"it was for canary {found.version}, this is {version}"
    elif weight not in found.analysis.steps:
        why = f"{weight}% is not one of its steps"
    else:
        return None
    return (f"The canary analysis plan (steps {steps}) is dropped: {why}; the canary is "
            "ramped by hand now (pass --steps to plan it again).")


# --- apply -------------------------------------------------------------------------------

def apply_deploy(root: Path, plan: DeployPlan) -> Landing:
    commit = git.commit_files(root, plan.base_commit, {plan.file: plan.new_text.encode()},
                              plan.message)
    if plan.mode == DIRECT:
        return land_on_default_branch(root, commit, plan.base_commit, plan.default_branch,
                                      plan.remote, push=plan.push, retry_hint="deploy")
    if not git.create_branch(root, plan.branch, commit):
        raise BranchExists(f"branch {plan.branch} appeared in {root} while deploying; "
                           "delete it or pick it up by hand")
    landing = Landing(commit, plan.branch)
    if plan.push:
        push_branch(root, plan.remote, commit, plan.branch)
        landing.pushed = True
    if plan.pr:
        open_pull_request(root, landing, plan.remote, plan.default_branch,
                          title=plan.message.splitlines()[0], body=pr_body(plan))
    return landing


def land_on_default_branch(root: Path, commit: str, parent: str, branch: str, remote: str,
                           *, push: bool, retry_hint: str) -> Landing:
    """Put `commit` (a child of `parent`) on `branch`: pushed first, then locally."""
    landing = Landing(commit, branch)
    if push:
        outcome = git.push(root, remote, commit, branch)
        if not outcome.ok:
            raise _rejected(remote, branch, outcome, retry_hint)
        landing.pushed = True
    local = git.resolve(root, f"refs/heads/{branch}")
    if local is None or local == parent or git.is_ancestor(root, local, commit):
        why = git.advance_branch(root, branch, commit, local)
        if why is not None:
            landing.notes.append(f"local {branch} was not updated ({why}); run `git pull "
                                 f"--ff-only {remote} {branch}`")
    else:
        landing.notes.append(f"local {branch} has diverged from {commit[:10]}; it was left "
                             f"as it is: run `git pull --rebase {remote} {branch}`")
    return landing


def push_branch(root: Path, remote: str, commit: str, branch: str) -> None:
    outcome = git.push(root, remote, commit, branch)
    if outcome.ok:
        return
    if outcome.non_fast_forward:
        raise PushRejected(
            f"{remote} already has a branch {branch} with other commits ({outcome.detail}); "
            f"someone deployed the same version: review theirs, or fetch it, rebase it onto "
            f"{remote}'s default branch and push again")
    raise PushRejected(f"{remote} refused branch {branch}: {outcome.detail}; the local "
                       f"branch {branch} holds the commit: push it when the remote accepts it")


def _rejected(remote: str, branch: str, outcome: git.PushOutcome, hint: str) -> PushRejected:
    if outcome.non_fast_forward:
        return NonFastForward(
            f"{remote}/{branch} moved while the {hint} ran ({outcome.detail}: someone else "
            f"pushed first); nothing was changed: rebase (`git pull --rebase {remote} "
            f"{branch}`) and run the {hint} again")
    return PushRejected(f"{remote} refused the push to {branch}: {outcome.detail}; check "
                        "branch protection and the token's permissions")


# --- pull requests -----------------------------------------------------------------------

def open_pull_request(root: Path, landing: Landing, remote: str, base_branch: str, *,
                      title: str, body: str) -> None:
    """Open a PR through GitHub's API when a token and the repository are known.

    Otherwise set the compare URL a person opens to create it by hand.
    """
    repo = github.repository(os.environ, git.remote_url(root, remote))
    token = github.token(os.environ)
    if repo is None:
        landing.notes.append(f"cannot tell the GitHub repository from remote {remote!r}; set "
                             f"GITHUB_REPOSITORY=owner/name, or open a pull request for "
                             f"{landing.branch} against {base_branch} by hand")
        return
    if token is None:
        landing.compare_url = github.compare_url(os.environ, repo, base_branch, landing.branch)
        landing.notes.append("GITHUB_TOKEN is not set: open the pull request at the "
                             "compare URL")
        return
    client = github.Client.from_env(os.environ, repo, token)
    landing.pull_request = client.create_pull(head=landing.branch, base=base_branch,
                                              title=title, body=body)


def pr_body(plan: DeployPlan) -> str:
    what = (f"Sends {plan.canary[1]}% of **{plan.env}**'s traffic for {plan.model} to "
            f"**{plan.display_id}** (canary)." if plan.canary
            else f"Deploys **{plan.display_id}** to **{plan.env}**.")
    before = (f"{plan.from_version or '(new)'}" + (
        f" + canary {plan.from_canary[0]} ({plan.from_canary[1]}%)" if plan.from_canary else ""))
    kept = plan.from_canary if plan.from_canary and plan.from_canary[0] != plan.to_version \
        else None
    canary = plan.canary or kept
    after = plan.to_version + (f" + canary {canary[0]} ({canary[1]}%)" if canary else "")
    return "\n".join([
        what,
        "",
        "| Environment | Model | From | To |",
        "|---|---|---|---|",
        f"| {plan.env} | {plan.model} | {before} | {after} |",
        "",
        "```diff",
        plan.diff.rstrip(),
        "```",
        "",
        "Opened by `ggufops deploy`. The `validate` and `gate` checks run on this pull "
        "request; merging it deploys.",
    ])


def describe(plan: DeployPlan) -> str:
    """The plan in words, for people."""
    where = (f"on {plan.default_branch} directly" if plan.mode == DIRECT
             else f"on new branch {plan.branch}")
    lines = [plan.message.splitlines()[0],
             f"  {plan.display_id} {where}, from {plan.base_ref} ({plan.base_commit[:10]})"]
    lines += [f"  warning: {w}" for w in plan.warnings]
    lines += ["  " + line for line in plan.diff.rstrip().splitlines()]
    return "\n".join(lines)
