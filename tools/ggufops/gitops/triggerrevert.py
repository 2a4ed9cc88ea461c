"""The revert an agent pushes when a rollback trigger fires, exactly once across a fleet.

It is the commit `ggufops rollback --push` would make (same planning, message and
trailers `Rollback-Of`, `Reason`), plus `Rollback-Trigger: metric=… value=… threshold=…
window=…s host=…`. It is planned on the remote's tip, freshly fetched into the agent's own
bare clone, and pushed without force. Exactly once: when the push is refused because the
branch moved (another host pushed first), the tip is fetched again; if it no longer runs
the bad version (someone reverted it, or deployed something else) nothing is pushed and the
agent converges to what git says; otherwise the revert is planned again on the new tip.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ggufops import git
from ggufops.errors import AlreadyDeployed, NonFastForward, NothingToRollBack
from ggufops.gitops import rollback
from ggufops.redact import redact

TRAILER = "Rollback-Trigger"
MAX_ATTEMPTS = 5
REMOTE = "origin"


@dataclass(frozen=True)
class TriggerRevert:
    env: str
    model: str
    bad_version: str
    trailer: str  # the value of Rollback-Trigger
    reason: str
    branch: str = "main"


@dataclass(frozen=True)
class RevertOutcome:
    pushed: str | None  # the revert commit this host pushed, or None
    attempts: int
    note: str  # what happened, one line

    @property
    def converged(self) -> bool:
        return self.pushed is None


def prepare_clone(clone: Path, push_url: str, host: str, *,
                  signing_key: Path | None = None) -> None:
    """A bare clone whose `origin` is `push_url` (credentials stay in its config only); its
    commits are signed with the SSH key `signing_key` when given (an agent with --trust)."""
    if not (clone / "HEAD").exists():
        clone.parent.mkdir(parents=True, exist_ok=True)
        git.run(["init", "--quiet", "--bare", str(clone)], clone.parent)
    if git.remote_url(clone, REMOTE) is None:
        git.run(["remote", "add", REMOTE, push_url], clone)
    else:
        git.run(["remote", "set-url", REMOTE, push_url], clone)
    git.run(["config", "user.name", f"ggufops agent ({host})"], clone)
    git.run(["config", "user.email", f"ggufops-agent@{host}"], clone)
    _sign_with(clone, signing_key)


def _sign_with(clone: Path, key: Path | None) -> None:
    """Signing set in the clone's own config, so `git.commit_tree` signs with `key`; without
    one, what an earlier run set is removed (the host user's git config then decides)."""
    if key is None:
        git.run(["config", "--unset", "commit.gpgSign"], clone, check=False)
        return
    git.run(["config", "gpg.format", "ssh"], clone)
    git.run(["config", "user.signingKey", str(key.resolve())], clone)
    git.run(["config", "commit.gpgSign", "true"], clone)


def push_revert(clone: Path, revert: TriggerRevert,
                max_attempts: int = MAX_ATTEMPTS) -> RevertOutcome:
    """Plan the revert on the remote tip and push it; see the module's docstring."""
    request = rollback.RollbackRequest(env=revert.env, model=revert.model,
                                       reason=revert.reason, mode=rollback.PUSH,
                                       remote=REMOTE, default_branch=revert.branch,
                                       skip_artifact_check=True)
    for attempt in range(1, max_attempts + 1):
        try:
            plan = rollback.plan_rollback(clone, request)
        except (AlreadyDeployed, NothingToRollBack) as e:
            return RevertOutcome(None, attempt, f"nothing pushed: {redact(str(e))}")
        if plan.from_version != revert.bad_version or plan.canary is not None:
            return RevertOutcome(None, attempt, f"nothing pushed: {revert.branch} no longer "
                                 f"runs {revert.model}@{revert.bad_version} (it runs "
                                 f"{plan.from_version}); converging to it")
        plan = replace(plan, message=with_trigger(plan.message, revert.trailer))
        try:
            landing = rollback.apply_rollback(clone, plan)
        except NonFastForward:
            continue  # someone pushed first: look at the new tip
        return RevertOutcome(landing.commit, attempt, f"pushed {landing.commit[:12]}: "
                             f"{revert.model} {revert.bad_version} -> {plan.to_version}")
    return RevertOutcome(None, max_attempts, f"nothing pushed: {revert.branch} kept moving "
                         f"({max_attempts} attempts); the next evaluation tries again")


def with_trigger(message: str, trailer: str) -> str:
    """The rollback message with `Rollback-Trigger:` in its trailer block, and the note
    on the skipped S3 check replaced: the agent restores a version it ran itself."""
    skipped = "The artifact of the restored version was not checked in the S3 remote " \
              "(--skip-artifact-check)."
    message = message.replace(skipped, "Pushed by the sync agent when a rollback trigger "
                              "fired; the restored version is the one this host ran "
                              "before (its artifact is in the host's store).")
    return message.rstrip("\n") + f"\n{TRAILER}: {trailer}\n"
