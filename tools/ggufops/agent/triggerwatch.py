"""The agent's side of rollback triggers: watch what it applied, judge, push the revert.

After an apply that changed a model's primary version by a deploy (not a rollback), the
agent watches that version: every tick it reads its server's request window (GET
/admin/requests) and judges it with the environment's `rollback_triggers` (agent/triggers).
A rollback rule that fires makes the agent push the generated revert itself
(gitops/triggerrevert: exactly once across the fleet), then apply it like any commit: with
the previous version kept as a hot standby that is a pointer swap. Alert-only rules are
reported (GET /status `triggers`) once per version and metric. A restarted agent resumes
its watches from the apply log (agent/loop.py `arrivals`), with what each had already
said (`said()`, kept in the log's state), so nothing is reported or pushed twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ggufops import git, yamlio
from ggufops.agent import triggers
from ggufops.agent.triggers import Firing, TriggerPolicy
from ggufops.agent.watching import EventLog, Notify, cannot_sign, request_window
from ggufops.errors import GgufopsError
from ggufops.gitops import triggerrevert
from ggufops.httpjson import rfc3339
from ggufops.redact import redact

log = logging.getLogger("ggufops.agent")



@dataclass
class Watched:
    model: str
    version: str
    previous: str | None
    since: float
    commit: str
    fired: Firing | None = None
    alerted: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class PushSettings:
    repo_url: str
    branch: str
    host: str
    clone: Path
    push_url: str | None = None
    token_file: Path | None = None
    signing_key: Path | None = None  # the agent's own SSH key: the revert is signed with it
    unsigned_refused: bool = False  # --trust without --signing-key: an unsigned revert is refused

    def url(self) -> str:
        """Where reverts are pushed: --push-url (default the --repo URL), with the token of
        --push-token-file as the password of an http(s) URL."""
        url = self.push_url or self.repo_url
        if self.token_file is None:
            return url
        token = self.token_file.read_text().strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return url
        netloc = f"x-access-token:{quote(token, safe='')}@{parts.hostname or ''}" + \
            (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class TriggerWatch:
    """Judged every tick by the agent; `report()` goes into GET /status."""

    def __init__(self, env: str, server: str, token: str | None, push: PushSettings,
                 notify: Notify | None = None) -> None:
        self.env = env
        self.server = server
        self.token = token
        self.push = push
        self.log = EventLog(push.host, notify)
        self.policy: TriggerPolicy | None = None
        self.watched: dict[str, Watched] = {}

    def applied(self, tree: Path, commit: str, *, before: dict[str, str],
                after: dict[str, str], is_rollback: bool, now: float) -> None:
        """A commit was applied: `before`/`after` map model -> primary version."""
        self.policy = _policy(tree, self.env)
        for model in list(self.watched):
            if after.get(model) != self.watched[model].version or is_rollback:
                del self.watched[model]
        if is_rollback or self.policy is None:
            return
        for model, version in after.items():
            if before.get(model) not in (None, version) and model not in self.watched:
                self.watched[model] = Watched(model, version, before[model], now, commit)

    def resume(self, tree: Path, watched: list[Watched], said: Any = None) -> None:
        """After a restart: watch again what the last applies brought (`watched`, from the
        apply log, with the time each version came), under the applied tree's policy, with
        what each watch had said before (`said()` as it was saved)."""
        self.policy = _policy(tree, self.env)
        self.watched = {w.model: w for w in watched} if self.policy is not None else {}
        for model, before in (said if isinstance(said, dict) else {}).items():
            w = self.watched.get(model)
            if w is None or not isinstance(before, dict) or \
                    (before.get("version"), before.get("since")) != (w.version, w.since):
                continue
            w.alerted = {str(m) for m in before.get("alerted") or ()}
            fired = before.get("fired")
            if isinstance(fired, dict):
                w.fired = Firing(**fired)

    def said(self) -> dict[str, Any]:
        """What each watch has reported (alerts) or done (a fired rule): saved by the agent
        so that a restart neither notifies nor pushes it again."""
        return {m: {"version": w.version, "since": w.since, "alerted": sorted(w.alerted),
                    "fired": None if w.fired is None else w.fired.as_dict()}
                for m, w in dict(self.watched).items()}

    def check(self, now: float | None = None) -> bool:
        """Judge every watched version; True when a revert was pushed (or found)."""
        if self.policy is None:
            return False
        now = time.time() if now is None else now
        acted = False
        for watched in list(self.watched.values()):
            if watched.fired is None:
                acted = self._judge(self.policy, watched, now) or acted
        return acted

    def _judge(self, policy: TriggerPolicy, watched: Watched, now: float) -> bool:
        window = self._window(watched.model, min(watched.since, now) - policy.window_s * 2)
        if window is None:
            return False
        judged = triggers.select(window, watched.model, watched.version,
                                 previous=watched.previous, since=watched.since, now=now,
                                 window_s=policy.window_s)
        firings = triggers.evaluate(policy, judged)
        for alert in (f for f in firings if f.action == triggers.ALERT):
            if alert.metric not in watched.alerted:
                watched.alerted.add(alert.metric)
                self._record(alert, {"outcome": "alert"}, now)
        fired = triggers.first_rollback(firings)
        return fired is not None and self._roll_back(watched, fired, now)

    def _roll_back(self, watched: Watched, fired: Firing, now: float) -> bool:
        host = self.push.host
        revert = triggerrevert.TriggerRevert(
            self.env, watched.model, watched.version, fired.trailer(host),
            f"rollback trigger {fired.metric} fired on {host}: {fired.value:.4g} vs "
            f"{fired.threshold:g} over {fired.window_s:g} s", self.push.branch)
        log.warning("rollback trigger fired for %s@%s: %s", watched.model, watched.version,
                    fired.trailer(host))
        if self.push.unsigned_refused:
            return self._cannot_sign(watched, fired, now)
        try:
            triggerrevert.prepare_clone(self.push.clone, self.push.url(), host,
                                        signing_key=self.push.signing_key)
            outcome = triggerrevert.push_revert(self.push.clone, revert)
        except (GgufopsError, OSError) as e:
            message = redact(str(e))
            log.error("rollback trigger: pushing the revert failed: %s", message)
            self._record(fired, {"outcome": "push failed", "error": message}, now)
            return False  # judged again next tick
        watched.fired = fired
        self._record(fired, {"outcome": "pushed" if outcome.pushed else "converged",
                             "commit": outcome.pushed, "attempts": outcome.attempts,
                             "note": outcome.note, "trailer": revert.trailer}, now)
        log.warning("rollback trigger: %s", outcome.note)
        return True

    def _cannot_sign(self, watched: Watched, fired: Firing, now: float) -> bool:
        """Said once per version: the rule is not judged again, a person must act."""
        message = (f"{cannot_sign('revert')}; revert with a signed `ggufops rollback --env "
                   f"{self.env} --push`, and give the agent a key its --trust file lists "
                   "(--signing-key, docs/trust.md)")
        log.error("rollback trigger: %s", message)
        watched.fired = fired
        self._record(fired, {"outcome": "push failed", "error": message}, now)
        return False

    def _window(self, model: str, since: float) -> dict[str, Any] | None:
        return request_window(self.server, self.token, model, since, "rollback triggers")

    def _record(self, firing: Firing, extra: dict[str, Any], now: float) -> None:
        self.log.record({**firing.as_dict(), **extra}, now)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.log.events

    def report(self) -> dict[str, Any]:
        return {"policy": None if self.policy is None else self.policy.__dict__,
                "watching": {m: {"version": w.version, "previous": w.previous,
                                 "since": rfc3339(w.since), "fired": w.fired is not None}
                             for m, w in dict(self.watched).items()},  # a copy: the
                # status thread reads while the agent's loop changes it
                "events": list(self.log.events)}


POLICY_FILE = "registry/policy.yaml"


def _policy(tree: Path, env: str) -> TriggerPolicy | None:
    path = tree / POLICY_FILE
    return _of_environment(path.read_bytes() if path.is_file() else None, path, env)


def policy_at(mirror: Path, commit: str, env: str) -> TriggerPolicy | None:
    """`env`'s triggers as `commit` had them, read as a live agent reads them on applying
    it (a restarted agent asks, for the commit that brought a version)."""
    return _of_environment(git.show_file(mirror, commit, POLICY_FILE), Path(POLICY_FILE), env)


def _of_environment(text: bytes | None, path: Path, env: str) -> TriggerPolicy | None:
    if text is None:
        return None
    try:
        return TriggerPolicy.of_environment(yamlio.parse(text, path).data, env)
    except GgufopsError as e:
        log.error("rollback triggers are off: %s", e)
        return None
