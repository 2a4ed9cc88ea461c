"""The agent's side of canary analysis: time each step, judge it, push the decision.

After an apply, every model whose canary has an `analysis:` plan is analysed. A step is due
`interval` seconds after the committer time of the commit that set its weight (every host
reads the same time from git, so all agree when it is due). When it is due, the agent reads
its server's request window since that time and judges the canary against the primary
(agent/canaryverdict). `wait` (too few requests) is judged again next tick, over a longer
window (until the policy's `progress_deadline`, if any, fails the step); `pass` and `fail`
are pushed as one commit built on the commit this host analysed
(gitops/canarystep: the push is the compare-and-swap, so one host decides each step). A
refused push means another host decided: the agent applies the new tip like any commit,
and the next step is timed from it. State lives in memory; an agent restarted mid-step
is fed its applied commit at start (Agent.recover) and finds the step's time again in git.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ggufops import git, yamlio
from ggufops.agent import canaryverdict
from ggufops.agent.canaryverdict import CanaryPolicy, Verdict
from ggufops.agent.triggerwatch import PushSettings
from ggufops.agent.watching import EventLog, Notify, cannot_sign, request_window
from ggufops.errors import GgufopsError, YamlError
from ggufops.fleet import rollout
from ggufops.gitops import canarystep, history, triggerrevert
from ggufops.httpjson import rfc3339
from ggufops.redact import redact
from ggufops.registry import canaryplan
from ggufops.registry.records import Canary, environment_in
from ggufops.registry.registry import environment_relpath

log = logging.getLogger("ggufops.agent")

@dataclass
class Analysed:
    """One model's canary under analysis on this host."""

    model: str
    primary: str
    canary: Canary
    commit: str  # the applied commit (what a decision is built on)
    started: float  # the committer time of the commit that set this weight
    decided: bool = False
    last: Verdict | None = None
    served: str | None = None  # the primary this host serves (a segment's), when not `primary`
    seen: float = field(default_factory=time.time)  # when this host began serving the step
    window_from: float = 0.0  # when its server's request window began (a restart empties it)

    def judged(self) -> str:
        """The version this host's primary requests are of: what it is compared with."""
        return self.served or self.primary

    def due(self) -> float:
        assert self.canary.analysis is not None
        return self.started + self.canary.analysis.interval

    def waiting_since(self) -> float:
        """Where a progress deadline counts from: the latest of the step's due time, when
        this host began serving the step (a host that applied it late has had no traffic to
        judge) and when its server's request window began (a server restart forgets what it
        had seen). After an agent restart `seen` comes from the apply log (Agent.recover):
        the server, and its window, kept running."""
        return max(self.due(), self.seen, self.window_from)

    def same_step(self, primary: str, canary: Canary) -> bool:
        return (self.primary, self.canary) == (primary, canary)


class CanaryWatch:
    """Checked every agent tick; `report()` goes into GET /status `canary_analysis`."""

    def __init__(self, env: str, server: str, token: str | None, push: PushSettings,
                 *, notify: Notify | None = None,
                 labels: Mapping[str, str] | None = None) -> None:
        self.env = env
        self.labels = dict(labels or {})  # a `segments:` entry serves its segment's version
        self.server = server
        self.token = token
        self.push = push
        self.policy = CanaryPolicy()
        self.analysed: dict[str, Analysed] = {}
        self.log = EventLog(push.host, notify)  # every decision, pushed or not, is sent

    def applied(self, tree: Path, mirror: Path, commit: str, *, now: float | None = None,
                seen: Mapping[str, float] | None = None) -> None:
        """A commit was applied (at `now`, the time the apply log recorded): (re)read the
        plans and the policy from its tree. `seen`: when this host began serving each
        model's step, after a restart (from the apply log); a new step starts at `now`.
        A live agent starts a new step on any change of the entry's primary or canary
        (weight, plan); the apply log records the version this host serves and the canary's
        version and weight, so after a restart a change of the plan alone, or on a segment
        host of the fleet's primary alone, is not a new step: the restart's clock is then
        the earlier, by that change's age."""
        now = time.time() if now is None else now
        self.policy = _policy(tree, self.env)
        entries = _entries(tree, self.env, self.labels)
        kept: dict[str, Analysed] = {}
        for model, (primary, served, canary) in entries.items():
            old = self.analysed.get(model)
            if old is not None and old.same_step(primary, canary):
                old.commit, old.decided = commit, False  # same step, another change landed
                old.served = served
                kept[model] = old
            else:
                started = step_time(mirror, self.env, commit, model, canary)
                kept[model] = Analysed(model, primary, canary, commit, started, served=served,
                                       seen=(seen or {}).get(model, now))
        self.analysed = kept

    def check(self, now: float | None = None) -> bool:
        """Judge every due step; True when a decision was pushed (or found pushed)."""
        now = time.time() if now is None else now
        acted = False
        for item in list(self.analysed.values()):
            if not item.decided and now >= item.due():
                acted = self._analyse(item, now) or acted
        return acted

    def _analyse(self, item: Analysed, now: float) -> bool:
        window = self._window(item.model, item.started)
        if window is None:
            return False
        item.window_from = float(window.get("started") or 0.0)
        verdict = canaryverdict.judge(
            self.policy, canaryverdict.sample(window, item.canary.version, "canary", item.started),
            canaryverdict.sample(window, item.judged(), "primary", item.started),
            now - item.started, overdue_s=now - item.waiting_since())
        item.last = verdict
        if verdict.outcome == canaryverdict.WAIT:
            return False
        return self._decide(item, verdict, now)

    def _decide(self, item: Analysed, verdict: Verdict, now: float) -> bool:
        decision = decision_of(self.env, item, verdict, self.push)
        log.warning("canary analysis of %s@%s at %d%%: %s (%s)", item.model,
                    item.canary.version, item.canary.weight, decision.kind, verdict.note)
        if self.push.unsigned_refused:
            message = (f"{cannot_sign('decision')}; give the agent a key its --trust file "
                       "lists (--signing-key, docs/trust.md)")
            log.error("canary analysis: %s", message)
            item.decided = True  # said once: a person must act (deploy or roll back, signed)
            self._record(decision, verdict, {"outcome": "push failed", "error": message}, now)
            return False
        try:
            triggerrevert.prepare_clone(self.push.clone, self.push.url(), self.push.host,
                                        signing_key=self.push.signing_key)
            outcome = canarystep.push_decision(self.push.clone, decision)
        except (GgufopsError, OSError) as e:
            message = redact(str(e))
            log.error("canary analysis: pushing the %s failed: %s", decision.kind, message)
            self._record(decision, verdict, {"outcome": "push failed", "error": message}, now)
            return False  # judged again next tick
        item.decided = True
        self._record(decision, verdict, {"outcome": "pushed" if outcome.pushed else "converged",
                                         "commit": outcome.pushed, "note": outcome.note}, now)
        log.warning("canary analysis: %s", outcome.note)
        return True

    def _window(self, model: str, since: float) -> dict[str, Any] | None:
        return request_window(self.server, self.token, model, since, "canary analysis")

    def _record(self, decision: canarystep.Decision, verdict: Verdict, extra: dict[str, Any],
                now: float) -> None:
        self.log.record({"kind": decision.kind, "model": decision.model,
                         "canary": decision.canary, "weight": decision.weight,
                         "next_weight": decision.next_weight, "verdict": verdict.as_dict(),
                         "trailer": decision.analysis, **extra}, now)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.log.events

    def report(self) -> dict[str, Any]:
        return {"policy": self.policy.__dict__,
                "analysing": {m: _shown(a, self.policy)
                              for m, a in dict(self.analysed).items()},
                "events": list(self.log.events)}


def decision_of(env: str, item: Analysed, verdict: Verdict,
                push: PushSettings) -> canarystep.Decision:
    """The commit a verdict asks for: the next step, the promotion or the abort."""
    assert item.canary.analysis is not None
    if verdict.outcome == canaryverdict.FAIL:
        kind, weight = canarystep.ABORT, 0
        reason = f"canary analysis failed on {verdict.metric}: {verdict.note}"
    else:
        weight = canaryplan.next_step(item.canary.weight, item.canary.analysis)
        kind = canarystep.PROMOTE if weight >= canaryplan.FINAL_STEP else canarystep.STEP
        reason = f"canary analysis passed at {item.canary.weight}%: {verdict.note}"
    return canarystep.Decision(env, item.model, item.primary, item.canary.version,
                               item.canary.weight, kind, weight, verdict.trailer(push.host),
                               f"{reason} on {push.host}", item.commit, push.branch,
                               on_evidence=verdict.metric != canaryverdict.DEADLINE)


def step_time(mirror: Path, env: str, commit: str, model: str, canary: Canary) -> float:
    """When the weight in force was set: the time the newest change that set this canary
    at this weight reached the branch (its merge's, for a pull request), from git; the
    applied commit's committer time when history does not say (a shallow mirror)."""
    try:
        events = history.read_history(mirror, env, commit, model=model, with_metrics=False)
    except GgufopsError as e:
        log.warning("canary analysis: cannot read the history of %s: %s", env, e)
        events = []
    setting = [e for e in events if (e.canary_version, e.canary_weight) ==
               (canary.version, canary.weight)]
    if setting:
        return datetime.fromisoformat(setting[-1].deployed_at).timestamp()
    return float(git.commit_time(mirror, commit) or time.time())


def _shown(item: Analysed, policy: CanaryPolicy) -> dict[str, Any]:
    deadline = None if policy.progress_deadline is None else \
        rfc3339(item.waiting_since() + policy.progress_deadline)
    return {"primary": item.primary, "compared_with": item.judged(),
            "canary": item.canary.version,
            "weight": item.canary.weight, "step_started": rfc3339(item.started),
            "due": rfc3339(item.due()), "decided": item.decided,
            "deadline": deadline,
            "last": None if item.last is None else item.last.as_dict()}


def _entries(tree: Path, env: str, labels: Mapping[str, str]
             ) -> dict[str, tuple[str, str, Canary]]:
    """model -> (the entry's primary, the primary this host serves, canary) for every
    canary with a valid analysis plan."""
    path = tree / environment_relpath(env)
    try:
        environment = environment_in(path.read_bytes(), str(path))
    except OSError:
        return {}
    found: dict[str, tuple[str, str, Canary]] = {}
    for model, entry in environment.models.items():
        canary = entry.canary
        if canary is None or canary.analysis is None or not canary.weight:
            continue
        if canaryplan.plan_problems(canary.weight, canary.analysis):
            log.error("canary analysis of %s is off: its plan in %s is invalid (run "
                      "`ggufops validate`)", model, path)
            continue
        found[model] = (entry.version, rollout.version_for(entry, labels), canary)
    return found


def _policy(tree: Path, env: str) -> CanaryPolicy:
    path = tree / "registry" / "policy.yaml"
    try:
        return CanaryPolicy.of_environment(yamlio.load(path), env) if path.is_file() \
            else CanaryPolicy()
    except (GgufopsError, YamlError) as e:
        log.error("canary analysis uses the default thresholds: %s", e)
        return CanaryPolicy()
