"""The commit a canary analysis makes: the next step, the promotion, or the abort.

One host decides at a time, with the push as compare-and-swap on the environment file: the
commit is built on the remote's tip (fetched again just before) when that tip's environment
file is the one the host analysed (only other files may have changed), and pushed without
force. When the remote refuses it as non-fast-forward, the host fetches and looks again:
another host decided first (or someone changed the environment), so it pushes nothing; the
agent applies the new tip like any commit and times the next step from it. An abort on a
measured failure is the exception: it also goes on top of a step of the same canary
(failure evidence is kept); an abort for a step that waited past its progress deadline is
not (another host's step is the progress it waited for).

Subjects and trailers (read back by `ggufops history`, kinds canary-step, promote, abort):

    canary-step(production): llama3-instruct canary 2.1.0 10% -> 25%
    promote(production): llama3-instruct 2.0.0 -> 2.1.0 (canary analysis)
    abort(production): llama3-instruct canary 2.1.0 removed (canary analysis: p95_ratio)

    Canary-Step: 25                 (100 for a promotion, 0 for an abort)
    Canary-Analysis: verdict=pass requests=57/512 error_rate=0.0000/0.0000 ... host=host-a

An abort also names the commit that started the canary (`Rollback-Of:`) and a `Reason:`,
so the hosts apply it as a rollback (waves are skipped) and history marks the canary's
deploy rolled back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ggufops import git
from ggufops.errors import GgufopsError, PushRejected
from ggufops.gitops import envfile, history
from ggufops.gitops.triggerrevert import REMOTE
from ggufops.redact import redact
from ggufops.registry.registry import environment_relpath

STEP, PROMOTE, ABORT = history.CANARY_STEP_KIND, history.PROMOTE, history.ABORT
# A refused push is looked at again on the new tip, this many times: fewer than a revert's
# (triggerrevert.MAX_ATTEMPTS), since a decision that keeps losing is simply judged again on
# the next tick, on the new tip, while a revert is what stops a bad version now.
PUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class Decision:
    """What a host decided for one model's canary, on the commit it analysed."""

    env: str
    model: str
    primary: str
    canary: str
    weight: int  # the weight analysed
    kind: str  # STEP, PROMOTE or ABORT
    next_weight: int  # STEP: the new weight; PROMOTE: 100; ABORT: 0
    analysis: str  # the value of Canary-Analysis
    reason: str  # one line, for the abort's Reason and the logs
    analysed: str  # the commit the host analysed (the parent of the new one)
    branch: str = "main"
    # an abort on a metric that was measured worse; not one for a step that waited past its
    # progress deadline, which says nothing against the canary when another host has
    # since passed the step on its own traffic
    on_evidence: bool = True


@dataclass(frozen=True)
class StepOutcome:
    pushed: str | None  # the commit this host pushed, or None
    note: str


def push_decision(clone: Path, decision: Decision) -> StepOutcome:
    """Fetch the tip; when it still holds the analysed state, commit the decision on it and
    push without force (a refused push: fetch and look again, up to PUSH_ATTEMPTS times).
    PushRejected when the remote refuses for another reason than a race."""
    path = environment_relpath(decision.env)
    seen = _Analysed(clone, decision, path)
    refused = ""
    for _ in range(PUSH_ATTEMPTS):
        git.fetch_branch(clone, REMOTE, decision.branch, timeout=60)
        tip = git.rev_parse(clone, f"refs/remotes/{REMOTE}/{decision.branch}")
        now = git.show_file(clone, tip, path)
        why_not = _why_not_on(decision, tip, now, seen, path)
        if why_not:
            return StepOutcome(None, f"nothing pushed: {refused or why_not}; converging to it")
        text = new_text((now or b"").decode(), decision, path)
        commit = git.commit_files(clone, tip, {path: text.encode()}, seen.message)
        outcome = git.push(clone, REMOTE, commit, decision.branch, timeout=60)
        if "up to date" in outcome.detail:
            # the same commit byte for byte was pushed by another host first
            return StepOutcome(None, f"nothing pushed: another host decided first "
                               f"({outcome.detail}); converging to it")
        if outcome.ok:
            return StepOutcome(commit, f"pushed {commit[:12]}: {decision.model} "
                               f"{summary(decision)}")
        if not outcome.non_fast_forward:
            raise PushRejected(f"the remote refused the {decision.kind} commit for "
                               f"{decision.model}: {redact(outcome.detail)}; check the push "
                               "credential (--push-token-file) and branch protection")
        refused = f"another host decided first ({outcome.detail})"
    return StepOutcome(None, f"nothing pushed: {decision.branch} kept moving ({refused}); "
                       "judged again on the new tip")


class _Analysed:
    """What the analysed commit says, read from the clone once, when first needed (after a
    fetch has brought it): its environment file and the decision's commit message."""

    def __init__(self, clone: Path, decision: Decision, path: str) -> None:
        self.clone, self.decision, self.path = clone, decision, path

    @functools.cached_property
    def file(self) -> bytes | None:
        return git.show_file(self.clone, self.decision.analysed, self.path)

    @functools.cached_property
    def message(self) -> str:
        return commit_message(self.decision, _started_by(self.clone, self.decision))


def _why_not_on(decision: Decision, tip: str, now: bytes | None, seen: _Analysed,
                path: str) -> str | None:
    """Why the decision may not be built on `tip`, whose environment file is `now` (None:
    it may). The compare-and-swap is on the environment file, not the whole commit: a tip
    whose environment file is the analysed one byte for byte (only other files, e.g.
    another environment, changed) takes the decision as it is. An abort on evidence also
    goes on top of a step of the same canary (another host passed that step on its own
    traffic; failure evidence is not discarded); one for lack of traffic does not."""
    if tip == decision.analysed:
        return None
    if now is not None and now == seen.file:
        return None
    if decision.kind == ABORT and decision.on_evidence and now is not None \
            and _same_canary(now, decision, path):
        return None
    return f"{decision.branch} moved from {decision.analysed[:12]} to {tip[:12]}"


def _same_canary(content: bytes, decision: Decision, path: str) -> bool:
    """Does the file still run the analysed primary with the same canary version?"""
    try:
        entry = envfile.read_models(content.decode(), path).get(decision.model, {})
    except GgufopsError:
        return False
    canary = envfile.canary(entry)
    return str(entry.get("version")) == decision.primary and canary is not None \
        and canary[0] == decision.canary and canary[1] > 0


def new_text(text: str, decision: Decision, path: str) -> str:
    """The environment file after the decision."""
    if decision.kind == STEP:
        return envfile.set_canary(text, decision.model, decision.canary, decision.next_weight,
                                  path)
    if decision.kind == PROMOTE:
        return envfile.set_version(text, decision.model, decision.canary, path)
    return envfile.remove_canary(text, decision.model, path)


def summary(decision: Decision) -> str:
    """What the decision does: the subject's text after the model."""
    if decision.kind == STEP:
        return f"canary {decision.canary} {decision.weight}% -> {decision.next_weight}%"
    if decision.kind == PROMOTE:
        return f"{decision.primary} -> {decision.canary} (canary analysis)"
    return f"canary {decision.canary} removed (canary analysis)"


def commit_message(decision: Decision, started_by: str | None) -> str:
    promoted = decision.kind == PROMOTE
    to_version = decision.canary if promoted else decision.primary
    canary = None if promoted else (decision.canary, decision.next_weight)
    body = f"Decided by the sync agent's canary analysis: {decision.reason}."
    message = history.format_message(
        decision.kind, decision.env, decision.model, decision.primary, to_version,
        rollback_of=started_by if decision.kind == ABORT else None,
        reason=decision.reason if decision.kind == ABORT else None, body=body, canary=canary,
        change=summary(decision))
    return message.rstrip("\n") + (f"\n{history.CANARY_STEP}: {decision.next_weight}\n"
                                   f"{history.CANARY_ANALYSIS}: {decision.analysis}\n")


def _started_by(clone: Path, decision: Decision) -> str | None:
    """The commit that started this canary: the oldest of the run of changes that set it,
    passing over changes that do not name a canary (e.g. a `ggufops config` commit during
    the canary) and stopping at another canary version or a removal (weight 0)."""
    if decision.kind != ABORT:
        return None
    events = history.read_history(clone, decision.env, decision.analysed, model=decision.model,
                                  with_metrics=False)
    start = None
    for event in reversed(events):
        if event.canary_version is None:
            continue
        if event.canary_version != decision.canary or not event.canary_weight:
            break
        start = event.commit
    return start
