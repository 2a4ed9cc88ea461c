"""`ggufops agent`: the sync agent on an inference host, pull-based like Flux or Argo CD.

Every `interval` seconds (or at once on POST /sync) it asks the git remote for the branch's
commit with one `git ls-remote`, and the server what it serves. When the commit is new it
applies it:

  syncing      fetch the branch into a bare mirror, export registry/ and environments/ at
               that commit, validate them (an invalid state is refused, never applied) and
               compute the plan: which version (sha256, DVC md5) each model should run
  downloading  pull missing artifacts (versions and canaries) into the content-addressed
               store in a child process, each verified against the sha256 of its version
               file (a file already there is reused), within --download-timeout
  loading      ask the server's admin API to load each model that changes (the server
               verifies the sha256 again and swaps without failing a request), then its
               canary (role "canary", with its weight); a canary the environment no longer
               has is unloaded
  verifying    poll the server's /v1/models until name, version and sha256, and the
               canary's version, sha256 and weight, match
  healthy      recorded in the apply log; the store keeps the last N versions per model

The newest desired state wins. While downloading, the agent keeps checking the remote
(every interval, and at once on POST /sync); before each load it checks again. When a newer
commit changes what this environment runs, the apply in progress is superseded: its
download is cancelled, unless the newer state needs every file it is still fetching (then
it finishes into the store), and nothing of the older state is loaded. A newer commit that
leaves this environment as it is (another environment, a registration) is simply adopted.

Any failure leaves the previous version serving: the phase becomes `degraded` with the
reason, and the attempt is retried with capped exponential backoff. An invalid commit is
not retried (it waits for a new commit); an artifact whose bytes in S3 do not match the
registry is retried only after --mismatch-retry seconds, on a new commit, or on POST /sync.
Every attempt goes to the SQLite apply log. Between commits each tick also checks that the
server still serves the applied state (a restarted server is reloaded from the store,
without downloads). Nothing the agent logs, reports or stores shows the credentials of the
git URL (ggufops.redact).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import git
from ggufops.agent import applylog
from ggufops.agent.canarywatch import CanaryWatch
from ggufops.agent.download import Download
from ggufops.agent.plan import Plan, Target, export_tree, plan_from_tree, prune_trees
from ggufops.agent.retention import evictable, remember_desired
from ggufops.agent.status import DEFAULT_STATUS_PORT, PHASES, Status, agent_metrics, serve_status
from ggufops.agent.triggerwatch import PushSettings, TriggerWatch, Watched, policy_at
from ggufops.agent.trust import TrustPolicy, check_signing_key
from ggufops.agent.trust import verify as verify_commit
from ggufops.agent.webhook import WebhookReceiver
from ggufops.artifacts import s3config
from ggufops.artifacts.s3config import S3Settings
from ggufops.artifacts.store import ArtifactStore
from ggufops.errors import (
    AgentError,
    ChecksumMismatch,
    DownloadTimedOut,
    GgufopsError,
    GitError,
    HealthCheckFailed,
    InvalidDesiredState,
    PointerError,
    ServerRefused,
    ServerUnreachable,
    Superseded,
    UsageError,
)
from ggufops.fleet import rollout
from ggufops.fleet import status as fleetstatus
from ggufops.fleet import view as fleetview
from ggufops.gitops.headpointer import PointerWatch
from ggufops.httpjson import Reply, error_message, request_json, rfc3339
from ggufops.notify import Notifier, NotifyConfig
from ggufops.redact import redact, redact_data

log = logging.getLogger("ggufops.agent")

TREES_KEPT = 3
DEFAULT_DOWNLOAD_TIMEOUT = 3600.0
DEFAULT_MISMATCH_RETRY = 600.0


@dataclass(frozen=True)
class AgentConfig:
    repo_url: str
    env: str
    store: Path
    server_url: str
    state_dir: Path
    branch: str = "main"
    interval: float = 5.0
    status_host: str = "127.0.0.1"
    status_port: int | None = DEFAULT_STATUS_PORT
    admin_token: str | None = None
    keep: int | None = None
    s3_endpoint: str | None = None
    prune: bool = False
    timeout: float = 300.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    git_timeout: float = 20.0
    download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT
    mismatch_retry: float = DEFAULT_MISMATCH_RETRY
    host_name: str | None = None  # fleet status: fleet/<env>/<host>.json (default: hostname)
    labels: tuple[tuple[str, str], ...] = ()  # e.g. (("zone", "eu"), ("wave", "1"))
    heartbeat: float = fleetstatus.DEFAULT_HEARTBEAT
    fleet_status: bool = True  # publish the fleet status to S3
    jitter: float = 0.1  # each wait is interval * (1 ± jitter): a fleet does not poll in step
    trust: TrustPolicy = field(default_factory=TrustPolicy)  # --trust, --allow-rewrite
    webhook_secret: bytes | None = None  # POST /sync verifies GitHub's X-Hub-Signature-256
    watch: str = "git"  # or the s3:// URL of a head pointer (headpointer.py, docs/scale.md)
    push_url: str | None = None  # where a fired rollback trigger pushes its revert (--repo)
    push_token_file: Path | None = None  # its credential (an http(s) URL's password)
    signing_key: Path | None = None  # signs that revert (SSH, unencrypted): --trust needs it
    notify: NotifyConfig | None = None  # webhook for fired and alert-only triggers

    def check(self) -> None:
        if self.repo_url.startswith("-"):
            raise UsageError(f"--repo {self.shown_url!r} is not a git URL")
        if self.interval <= 0 or self.backoff_initial <= 0 or self.backoff_max <= 0:
            raise UsageError("--interval and the backoff times must be positive seconds")
        if self.download_timeout <= 0 or self.mismatch_retry <= 0:
            raise UsageError("--download-timeout and --mismatch-retry must be positive seconds")
        if self.keep is not None and self.keep < 2:
            raise UsageError("--keep must be at least 2 (the serving and the previous version)")
        if self.heartbeat <= 0:
            raise UsageError("--heartbeat must be positive seconds")
        if not 0 <= self.jitter < 1:
            raise UsageError("--jitter must be a fraction from 0 to below 1, e.g. 0.1")
        check_signing_key(self.signing_key, self.trust,
                          pushes=self.push_url is not None or self.push_token_file is not None)

    @property
    def server(self) -> str:
        return self.server_url.rstrip("/")

    @property
    def shown_url(self) -> str:
        """The git URL as it may be shown or stored: credentials redacted."""
        return redact(self.repo_url)


# --- talking to the server ------------------------------------------------------------------


class ServerClient:
    """The agent's side of `ggufops serve`: model info and the admin API."""

    def __init__(self, base: str, token: str | None, timeout: float) -> None:
        self.base = base
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None,
              timeout: float = 10.0) -> Reply:
        try:
            return request_json(method, self.base + path, body, token=self.token,
                                timeout=timeout)
        except OSError as e:
            reason = getattr(e, "reason", e)
            raise ServerUnreachable(f"inference server {self.base} does not answer ({reason}); "
                                    "is `ggufops serve` running? (systemctl status "
                                    "ggufops-serve)") from None

    def serving(self) -> dict[str, dict[str, Any]]:
        """name -> /v1/models entry."""
        reply = self._call("GET", "/v1/models")
        data = reply.data if isinstance(reply.data, dict) else {}
        if reply.status != 200 or not isinstance(data.get("data"), list):
            raise ServerUnreachable(f"{self.base}/v1/models answered {error_message(reply)}")
        return {str(m.get("name")): m for m in data["data"] if isinstance(m, dict)}

    def load(self, target: Target) -> None:
        reply = self._call("POST", "/admin/models", target.load_body(), timeout=self.timeout)
        if reply.status >= 400:
            kind = ChecksumMismatch if reply.status == 422 and "sha256" in error_message(
                reply) else ServerRefused
            raise kind(f"server refused to load {target.display_id} (HTTP {reply.status}): "
                       f"{error_message(reply)}")

    def load_group(self, group: str, targets: list[Target]) -> None:
        """Switch a release group all at once (POST /admin/groups), or raise."""
        bodies = [b for t in targets for b in ([t.load_body()] + (
            [t.canary.load_body()] if t.canary is not None else []))]
        reply = self._call("POST", "/admin/groups", {"group": group, "models": bodies},
                           timeout=self.timeout)
        if reply.status >= 400:
            kind = ChecksumMismatch if reply.status == 422 and "sha256" in error_message(
                reply) else ServerRefused
            raise kind(f"server refused to switch group {group} (HTTP {reply.status}): "
                       f"{error_message(reply)}; every model of the group keeps its version")

    def unload(self, name: str) -> None:
        reply = self._call("DELETE", f"/admin/models/{name}")
        if reply.status >= 400 and reply.status != 404:
            raise ServerRefused(f"server refused to unload {name}: {error_message(reply)}")

    def unload_canary(self, name: str) -> None:
        reply = self._call("DELETE", f"/admin/models/{name}/canary")
        if reply.status >= 400 and reply.status != 404:
            raise ServerRefused(f"server refused to unload the canary of {name}: "
                                f"{error_message(reply)}")


class _Stopping(Exception):
    """The agent is stopping (SIGTERM) in the middle of an apply."""


# --- the agent --------------------------------------------------------------------------------


class Agent:
    """One agent: `run(stop)` loops until `stop` is set; `trigger()` checks at once."""

    def __init__(self, config: AgentConfig) -> None:
        config.check()
        self.config = config
        self.state_dir = config.state_dir
        self.mirror = config.state_dir / "mirror.git"
        self.trees = config.state_dir / "trees"
        self.log = applylog.ApplyLog(config.state_dir / applylog.FILE_NAME)
        self.server = ServerClient(config.server, config.admin_token, config.timeout)
        self.metrics = agent_metrics()
        self.status = Status(environment=config.env,
                             remote={"url": config.shown_url, "branch": config.branch,
                                     "reachable": None, "error": None},
                             server={"url": config.server, "reachable": None, "error": None})
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._forced = False
        self._applied: Plan | None = None
        self._applied_targets: dict[str, dict[str, Any]] = {}
        self._last_attempted: str | None = None
        self._attempt: int | None = None
        self._newer: Plan | None = None  # the newest commit's plan, read while applying
        self._newer_heads: set[str] = set()  # the remote heads it answers for
        self._desired_history: list[list[str]] = []
        self.fleet = self._fleet_publisher() if config.fleet_status else None
        self.pointer = None if config.watch == "git" else \
            PointerWatch(config.watch, config.s3_endpoint)
        self._lagging: tuple[str, str] | None = None  # (pointer, applied descendant of it)
        push = PushSettings(
            config.repo_url, config.branch, config.host_name or fleetstatus.default_host_name(),
            config.state_dir / "revert.git", config.push_url, config.push_token_file,
            config.signing_key, config.trust.allowed_signers is not None
            and config.signing_key is None)
        notify = Notifier(config.notify).send if config.notify else None
        self.triggers = TriggerWatch(config.env, config.server, config.admin_token, push,
                                     notify=notify)
        self._trigger_said: Any = None  # what was last saved of self.triggers.said()
        self.canaries = CanaryWatch(config.env, config.server, config.admin_token, push,
                                    notify=notify, labels=dict(config.labels))

    def _fleet_publisher(self) -> fleetstatus.Publisher:
        c = self.config
        host = fleetstatus.check_host_name(c.host_name or fleetstatus.default_host_name())
        publisher_config = fleetstatus.PublisherConfig(host, c.env, dict(c.labels), c.heartbeat)
        return fleetstatus.Publisher(publisher_config, self.snapshot, self.fleet_settings)

    def fleet_settings(self) -> S3Settings | None:
        """Where the fleet status goes: the S3 remote of the newest commit read (with
        --s3-endpoint); None before any commit was read."""
        try:
            trees = self._recent_trees()
            settings = s3config.resolve(trees[-1]) if trees else None
        except (OSError, GgufopsError):
            return None  # e.g. the tree was pruned meanwhile: the next look finds another
        if settings is not None and self.config.s3_endpoint:
            settings = dataclasses.replace(settings, endpoint_url=self.config.s3_endpoint)
        return settings

    # lifecycle

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self.recover()
        while not stop.is_set():
            self.tick()
            self._sleep(stop)

    def trigger(self) -> None:
        """Check the remote now (the /sync webhook)."""
        with self._lock:
            self._forced = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _take_forced(self) -> bool:
        with self._lock:
            forced, self._forced = self._forced, False
        return forced

    def _sleep(self, stop: threading.Event) -> None:
        jitter = self.config.jitter
        delay = self.config.interval * random.uniform(1 - jitter, 1 + jitter)
        with self._lock:
            retry_at = self.status.next_retry_at
        now = time.time()
        if retry_at is not None and retry_at > now:
            delay = min(delay, retry_at - now)
        if not stop.is_set():
            self._wake.wait(delay)
        self._wake.clear()

    def recover(self) -> None:
        """After a restart: clean temp files, restore what was applied from the apply log."""

        store = ArtifactStore(self.config.store)
        store.prepare()
        removed = store.clean_tmp(older_than=0)
        if removed:
            log.info("removed %d temp file(s) of interrupted downloads", len(removed))
        for tmp in self.trees.glob(".tmp-*") if self.trees.is_dir() else ():
            shutil.rmtree(tmp, ignore_errors=True)
        history = self.log.load_state("desired_history")
        if isinstance(history, list):
            self._desired_history = [list(map(str, h)) for h in history if isinstance(h, list)]
        last = self.log.last("success")
        if last is not None and last.environment == self.config.env:
            self._applied_targets = last.models
            self._update(applied_commit=last.commit, last_success_at=last.finished_at,
                         desired=dict(last.models))
            self._resume_watches(last)
        self._publish()

    def _resume_watches(self, last: applylog.Attempt) -> None:
        """After a restart nothing is applied while the server is in sync: the canary
        analysis and the rollback triggers resume from the applied commit's tree (each
        canary step's time is in git; when each version came, in the apply log)."""
        try:
            tree = export_tree(self.mirror, last.commit, self.trees)
        except (GgufopsError, OSError) as e:
            log.warning("canary analysis and rollback triggers not resumed: cannot read "
                        "%s: %s", last.commit[:12], e)
            return
        successes = [a for a in self.log.recent(RESUME_LOOKBACK)
                     if a.outcome == "success" and a.environment == self.config.env]
        self.canaries.applied(tree, self.mirror, last.commit, seen=canary_arrivals(successes))
        self._trigger_said = self.log.load_state(TRIGGER_SAID)
        env, mirror = self.config.env, self.mirror
        self.triggers.resume(tree, [w for w, span in arrivals(successes)
                                    if watched_live(mirror, env, w, span)], self._trigger_said)

    # one tick

    def tick(self) -> None:
        head = self._check_remote()
        serving = self._observe_server()
        forced = self._take_forced()
        with self._lock:
            s = self.status
            due = forced or s.next_retry_at is None or time.time() >= s.next_retry_at
            applied, refused = s.applied_commit, s.refused_commit
        if head is None or (head == refused and not forced):
            if due:
                self._reconcile_applied(serving)
        elif head != applied and (due or head != self._last_attempted):
            self.apply(head)  # a new commit is applied at once, a failed one after backoff
        elif head == applied and due and not self._in_sync(serving):
            self.apply(head)  # e.g. the server restarted: reload from the store
        self._check_triggers()

    def _check_triggers(self) -> None:
        """Judge the rollback triggers of what was applied; a pushed revert is applied at
        once (the next tick, without waiting for the interval)."""
        with self._lock:
            healthy = self.status.phase == "healthy"
        if healthy and (self.triggers.check() | self.canaries.check()):
            self.trigger()
        said = self.triggers.said()
        if said != self._trigger_said:  # kept for a restart: say nothing twice
            self._trigger_said = said
            self.log.save_state(TRIGGER_SAID, said)

    def _check_remote(self, *, quiet: bool = False) -> str | None:
        """The branch's commit on the remote, or None when it does not answer (reported in
        /status; unless `quiet`, the agent is also degraded)."""
        now = time.time()
        try:
            head = self._remote_head()
        except (GitError, PointerError) as e:
            self.metrics.inc("ggufops_agent_remote_checks_total", ("unreachable",))
            self._remote_down(str(e), now, quiet)
            return None
        self.metrics.inc("ggufops_agent_remote_checks_total", ("ok",))
        with self._lock:
            was_down = self.status.remote.get("reachable") is False
            self.status.remote.update(reachable=True, error=None, last_ok_at=rfc3339(now))
            self.status.last_check_at = now
            self.status.desired_commit = head
        if was_down:
            log.info("git remote %s reachable again", self.config.shown_url)
        return head

    def _remote_head(self) -> str:
        """The branch's commit: `git ls-remote`, or the head pointer in S3 (--watch)."""
        if self.pointer is None:
            return git.ls_remote(self.config.repo_url, self.config.branch,
                                 timeout=self.config.git_timeout)
        head = self.pointer.head()
        with self._lock:
            applied = self.status.applied_commit
        if applied is None or head == applied:
            return head
        if self._lagging != (head, applied):
            if not (self.mirror / "HEAD").is_file() or not git.is_ancestor(self.mirror, head,
                                                                           applied):
                return head
            self._lagging = (head, applied)
        return applied  # the fetch already went past the pointer: nothing newer to apply

    def _remote_down(self, error: str, now: float, quiet: bool) -> None:
        with self._lock:
            first = self.status.remote.get("reachable") is not False
            self.status.remote.update(reachable=False, error=error)
            self.status.last_check_at = now
        if first and not quiet:
            log.warning("%s; keeping the current models", error)
            self._degrade(f"{error}; the server keeps serving the last applied state",
                          retry=False)

    def _observe_server(self) -> dict[str, dict[str, Any]] | None:
        """What the server serves now (None when it does not answer); /status shows it."""
        try:
            serving = self.server.serving()
        except ServerUnreachable as e:
            self._record_serving(None, str(e))
            return None
        self._record_serving(serving, None)
        return serving

    def _record_serving(self, serving: dict[str, dict[str, Any]] | None,
                        error: str | None) -> None:
        now = time.time()
        with self._lock:
            self.status.serving = {n: _served(m) for n, m in (serving or {}).items()}
            self.status.server.update(reachable=serving is not None, error=error,
                                      checked_at=rfc3339(now))

    def _reconcile_applied(self, serving: dict[str, dict[str, Any]] | None) -> None:
        """No commit to apply (remote down, or refused): keep the applied state served."""
        if not self._applied_targets or self._in_sync(serving):
            return
        log.info("the server does not serve the applied models; reloading them from the store")
        try:
            self._load_targets(self._applied_targets,
                               groups=self._applied.groups if self._applied else None)
        except GgufopsError as e:
            self._degrade(str(e), retry=True)

    def _in_sync(self, serving: dict[str, dict[str, Any]] | None) -> bool:
        """Does `serving` hold exactly the applied versions? (then maybe healthy)"""
        if serving is None:
            return False
        in_sync = all(Target.from_request(n, want).served_by(serving.get(n))
                      for n, want in self._applied_targets.items())
        if in_sync:
            self._maybe_healthy()
        return in_sync

    def _maybe_healthy(self) -> None:
        """healthy = remote answers, its commit is applied, and the server serves it."""
        with self._lock:
            s = self.status
            healthy = s.remote.get("reachable") is True and s.desired_commit is not None \
                and s.desired_commit == s.applied_commit
            if not healthy or s.phase == "healthy":
                return
            s.phase, s.last_error, s.failures, s.next_retry_at = "healthy", None, 0, None
            applied = s.applied_commit or ""
            self._save_status()
        log.info("healthy: serving the state of %s", applied[:12])

    # applying a commit

    def apply(self, commit: str) -> bool:
        """Apply the branch (at `commit` or newer); True on success."""
        self._last_attempted = commit
        started = time.monotonic()
        attempt = self._attempt = self.log.start(commit, self.config.env, {})
        step = "syncing"
        self._forget_refusal(commit)
        try:
            self._set_phase(step, attempt)
            commit = self._fetch(commit, attempt)
            plan = self._plan(commit)
            self.log.update(attempt, models=plan.requests())
            self._set_desired(plan)
            for step, action in self._steps():
                self._set_phase(step, attempt)
                plan = action(plan)
        except Superseded as e:
            return self._superseded(attempt, step, str(e), started)
        except _Stopping:
            self._finish(attempt, "interrupted", step, "the agent stopped", started)
            return False
        except InvalidDesiredState as e:
            self._finish(attempt, "refused", step, str(e), started)
            self._refuse(commit, str(e), getattr(e, "reason", "invalid"))
            return False
        except ChecksumMismatch as e:
            self._finish(attempt, "failed", step, str(e), started)
            self._mismatch(str(e), step)
            return False
        except GgufopsError as e:
            self._finish(attempt, "failed", step, str(e), started)
            self._degrade(str(e), retry=True)
            return False
        except Exception as e:  # a bug must not stop the agent: report it, retry
            log.exception("unexpected error while applying %s", commit[:12])
            message = f"unexpected {type(e).__name__}: {e} (a bug; see the agent's log)"
            self._finish(attempt, "failed", step, message, started)
            self._degrade(message, retry=True)
            return False
        self._succeed(plan, self._finish(attempt, "success", "healthy", None, started))
        return True

    def _steps(self) -> list[tuple[str, Callable[[Plan], Plan]]]:
        return [("downloading", self._download), ("waiting", self._wait_for_wave),
                ("loading", self._load), ("verifying", self._verify)]

    # rollout waves

    def _wait_for_wave(self, plan: Plan) -> Plan:
        """In a later rollout wave: wait (artifacts already stored) until every host of the
        earlier waves reports this commit applied and healthy; a rollback does not wait."""
        waves = plan.waves
        labels = dict(self.config.labels)
        if self.fleet is None or rollout.wave_index(waves, labels) == 0 or \
                plan.requests() == self._applied_targets or self._is_rollback(plan.commit):
            return plan  # first wave, nothing new for this host (a reload), or a rollback
        waiting: list[str] | None = None
        while True:
            wave_gate = rollout.gate(waves, labels, plan.commit, self._fleet_reports(),
                                     self.fleet.config.host)
            if wave_gate.ready:
                return plan
            if wave_gate.waiting_for != waiting:
                waiting = wave_gate.waiting_for
                log.info("rollout wave %d: waiting for %s to apply %s", rollout.wave_index(
                    waves, labels) + 1, ", ".join(waiting), plan.commit[:12])
            self._wake.wait(self.config.interval)
            self._wake.clear()
            if self._stop.is_set():
                raise _Stopping
            plan = self._follow_head(plan)  # a newer commit supersedes the wait

    def _fleet_reports(self) -> list[fleetstatus.HostReport]:
        settings = self.fleet_settings()
        if settings is None:
            return []
        try:
            return [seen.report for seen in fleetview.read_reports(settings, self.config.env)]
        except GgufopsError as e:
            log.warning("cannot read the fleet status for the rollout waves: %s", e)
            return []

    def _is_rollback(self, commit: str) -> bool:
        """Is `commit`, or a commit since the applied one, a rollback?"""
        applied = self.status.applied_commit
        span = f"{applied}..{commit}" if applied else f"{commit}~1..{commit}"
        try:
            return _rollback_in(self.mirror, span)
        except GitError:
            return rollout.is_rollback(git.out(["log", "-1", "--format=%B", commit],
                                               self.mirror))

    def _fetch(self, commit: str, attempt: int) -> str:
        """Fetch the branch into the mirror; the commit fetched (`commit` or newer)."""
        try:
            fetched = git.mirror_fetch(self.mirror, self.config.repo_url, self.config.branch,
                                       timeout=max(60.0, self.config.git_timeout))
        except GitError as e:
            raise AgentError(f"fetching {self.config.shown_url} failed: {e}; retrying") from None
        if fetched != commit:
            self.log.update(attempt, commit=fetched)
            self._last_attempted = fetched
        with self._lock:
            self.status.desired_commit = fetched
        return fetched

    def _plan(self, commit: str) -> Plan:
        """The plan of `commit` (already read if it superseded the last apply)."""
        newer, self._newer, self._newer_heads = self._newer, None, set()
        plan = newer if newer is not None and newer.commit == commit else self._plan_at(commit)
        keep = {commit} | ({self._applied.commit} if self._applied else set())
        prune_trees(self.trees, keep | {p.name for p in self._recent_trees()})
        return plan

    def _plan_at(self, commit: str) -> Plan:
        """The plan of a fetched commit; InvalidDesiredState if it cannot be applied."""
        with self._lock:
            applied = self.status.applied_commit
        verify_commit(self.mirror, commit, applied, self.config.trust)  # UntrustedCommit
        tree = export_tree(self.mirror, commit, self.trees)
        try:
            return plan_from_tree(tree, commit, self.config.env, self.config.keep,
                                  dict(self.config.labels))
        except InvalidDesiredState:
            raise
        except GgufopsError as e:
            raise InvalidDesiredState(f"commit {commit[:12]} cannot be read: {e}") from None

    def _recent_trees(self) -> list[Path]:
        trees = [p for p in self.trees.iterdir() if not p.name.startswith(".")] \
            if self.trees.is_dir() else []
        return sorted(trees, key=lambda p: p.stat().st_mtime)[-TREES_KEPT:]

    # the newest desired state wins

    def _follow_head(self, plan: Plan, download: Download | None = None, *,
                     adopt: bool = True) -> Plan:
        """Check the remote: the plan to go on with, or Superseded when a newer commit
        changes what this environment runs (a running `download` is cancelled unless the
        newer state still needs every file it fetches). A newer commit with the same state
        for this environment is adopted (unless not `adopt`: then it is left to the next
        tick)."""
        head = self._check_remote(quiet=True)
        if head is None or head == plan.commit:
            return plan
        newer = self._newer_plan(head)
        if newer is None:
            return plan  # the newer commit cannot be fetched now: keep going, check again
        if newer.requests() == plan.requests():
            if not adopt:
                return plan
            log.info("%s leaves %s as %s has it: applying it as one", head[:12],
                     self.config.env, plan.commit[:12])
            self._adopt(newer)
            return newer
        self._set_desired(newer)
        if download is not None and _still_needed(download, newer):
            return plan  # finishes into the store; the next check before loading stops it
        what = "its download was cancelled" if download is not None else "nothing was loaded"
        raise Superseded(f"{head[:12]} changed {self.config.env} while {plan.commit[:12]} was "
                         f"being applied; {what}; applying {head[:12]} instead")

    def _newer_plan(self, head: str) -> Plan | None:
        """The plan of the newest commit (cached per commit); None if it cannot be fetched;
        Superseded if it is invalid (the older state is no longer desired either)."""
        if self._newer is not None and head in self._newer_heads:
            return self._newer
        try:
            fetched = git.mirror_fetch(self.mirror, self.config.repo_url, self.config.branch,
                                       timeout=max(60.0, self.config.git_timeout))
            self._newer = self._plan_at(fetched)
            self._newer_heads = {head, fetched}
        except InvalidDesiredState as e:
            raise Superseded(f"{head[:12]} replaced the commit being applied, and is "
                             f"invalid: {e}") from None
        except GgufopsError as e:
            log.warning("cannot read the newer commit %s yet: %s", head[:12], e)
            return None
        return self._newer

    def _adopt(self, newer: Plan) -> None:
        """Go on applying the same state as the newer commit's."""
        self._last_attempted = newer.commit
        if self._attempt is not None:
            self.log.update(self._attempt, commit=newer.commit)

    def _superseded(self, attempt: int, step: str, message: str, started: float) -> bool:
        log.info("superseded: %s", message)
        self._finish(attempt, "superseded", step, message, started)
        self._set_phase("syncing")
        self._wake.set()  # apply the newer commit at once, without waiting an interval
        return False

    # downloading

    def _download(self, plan: Plan) -> Plan:

        store = ArtifactStore(self.config.store)
        missing = [t for t in plan.artifacts() if not store.has(t.sha256, t.size)]
        if not missing:
            return plan
        for target in missing:
            log.info("downloading %s (%d bytes)", target.display_id, target.size)
        download = Download(self.config.store, plan.tree, missing, self.config.s3_endpoint,
                            timeout=self.config.download_timeout, wake=self._wake)
        try:
            plan = self._await(download, plan)
        except BaseException:
            if download.cancel():
                store.clean_tmp(older_than=0)  # the killed child could not remove its file
            raise
        finally:
            self._count_downloads(download)
        download.result()
        return plan

    def _await(self, download: Download, plan: Plan) -> Plan:
        """Wait for `download`, following the remote and the server every interval."""
        checked = time.monotonic()
        while True:
            timeout = min(self.config.interval, max(0.0, download.remaining()))
            self._wake.wait(timeout)
            self._wake.clear()
            self._count_downloads(download)
            if download.finished:
                return plan
            if self._stop.is_set():
                raise _Stopping
            if download.remaining() <= 0:
                raise DownloadTimedOut(
                    f"downloading {download.describe()} did not finish within "
                    f"{self.config.download_timeout:.0f} s (--download-timeout); S3 is slow or "
                    "stalled: check the link, or raise GGUFOPS_DOWNLOAD_TIMEOUT for large files")
            if self._take_forced() or time.monotonic() - checked >= self.config.interval:
                checked = time.monotonic()
                self._observe_server()
                plan = self._follow_head(plan, download)

    def _count_downloads(self, download: Download) -> None:
        for done in download.take_done():
            self.metrics.inc("ggufops_agent_downloads_total")
            self.metrics.inc("ggufops_agent_download_bytes_total", (), done.size)
            self.log.touch_artifact(done.name, done.version, done.sha256)

    # loading and verifying

    def _load(self, plan: Plan) -> Plan:
        plan = self._follow_head(plan)  # never load a state that is no longer desired

        def still_desired() -> None:
            self._follow_head(plan, adopt=False)

        self._load_targets(plan.requests(), before_each=still_desired, groups=plan.groups)
        return plan

    def _load_targets(self, targets: dict[str, dict[str, Any]],
                      before_each: Callable[[], None] | None = None,
                      groups: dict[str, list[str]] | None = None) -> None:
        serving = self.server.serving()
        if groups and self._load_groups(targets, serving, groups, before_each):
            serving = self.server.serving()
        for name, want in sorted(targets.items()):
            target = Target.from_request(name, want)
            entry = serving.get(name) or {}
            if not target.primary_served_by(entry):
                self._load_one(target, before_each)
            if not target.shadow_served_by(entry):
                self._apply_shadow(target, before_each)
            if target.canary_served_by(entry):
                continue
            if target.canary is None:
                log.info("asking the server to unload the canary of %s", name)
                self.server.unload_canary(name)
            else:
                self._load_one(target.canary, before_each)

    def _load_groups(self, targets: dict[str, dict[str, Any]],
                     serving: dict[str, dict[str, Any]], groups: dict[str, list[str]],
                     before: Callable[[], None] | None) -> bool:
        """Switch every release group that changes in one server call each; True if any."""
        switched = False
        for group, members in sorted(groups.items()):
            wanted = [Target.from_request(m, targets[m]) for m in sorted(members)
                      if m in targets]
            if all(t.served_by(serving.get(t.name)) for t in wanted):
                continue
            if before is not None:
                before()
            log.info("asking the server to switch group %s: %s", group,
                     ", ".join(t.display_id for t in wanted))
            try:
                self.server.load_group(group, wanted)
            except ChecksumMismatch as e:
                for t in wanted:
                    if t.sha256 in str(e):
                        self._evict(t.sha256)
                raise
            switched = True
        return switched

    def _apply_shadow(self, target: Target, before: Callable[[], None] | None) -> None:
        """Load the shadow the environment asks for, or unload the one it dropped."""
        if target.shadow is not None:
            self._load_one(target.shadow, before)
            return
        log.info("asking the server to unload the shadow of %s", target.name)
        reply = self.server._call("DELETE", f"/admin/models/{target.name}/shadow")
        if reply.status >= 400 and reply.status != 404:
            raise ServerRefused(f"server refused to unload the shadow of {target.name}: "
                                f"{error_message(reply)}")

    def _load_one(self, target: Target, before: Callable[[], None] | None) -> None:
        if before is not None:
            before()
        canary = f" as {target.role} (weight {target.weight})" \
            if target.weight is not None else ""
        log.info("asking the server to load %s%s", target.display_id, canary)
        try:
            self.server.load(target)
        except ChecksumMismatch:
            self._evict(target.sha256)
            raise

    def _evict(self, sha256: str) -> None:
        """A stored file that fails verification is removed, so the retry downloads it."""

        with contextlib.suppress(OSError, GgufopsError):
            ArtifactStore(self.config.store).entry(sha256).unlink(missing_ok=True)
            log.warning("removed %s… from the store: it failed verification", sha256[:12])

    def _verify(self, plan: Plan) -> Plan:
        deadline = time.monotonic() + self.config.timeout
        while True:
            serving = self.server.serving()
            self._record_serving(serving, None)
            wrong = [t for t in plan.targets.values() if not t.served_by(serving.get(t.name))]
            if not wrong:
                break
            if time.monotonic() > deadline:
                names = ", ".join(t.display_id for t in wrong)
                raise HealthCheckFailed(f"the server did not report {names} within "
                                        f"{self.config.timeout:.0f} s; see its log")
            time.sleep(0.05)
        if self.config.prune:
            for name in set(serving) - set(plan.targets):
                self.server.unload(name)
        return plan

    # outcomes

    def _finish(self, attempt: int, outcome: str, phase: str, error: str | None,
                started: float) -> float:
        """Log the outcome; the time the apply log recorded (a restart reads it back)."""
        finished = self.log.finish(attempt, outcome, phase, error)
        self.metrics.inc("ggufops_agent_applies_total", (outcome,))
        self.metrics.observe("ggufops_agent_apply_duration_seconds", (outcome,),
                             time.monotonic() - started)
        return finished

    def _succeed(self, plan: Plan, now: float) -> None:
        previous = self._applied_targets
        self.triggers.applied(plan.tree, plan.commit, before=_versions(previous),
                              after={n: t.version for n, t in plan.targets.items()},
                              is_rollback=self._is_rollback(plan.commit), now=now)
        self.canaries.applied(plan.tree, self.mirror, plan.commit, now=now)
        self._applied = plan
        self._applied_targets = {n: t.load_request() for n, t in plan.targets.items()}
        self._retain(plan, previous, now)  # done before anyone is told it is healthy
        with contextlib.suppress(GgufopsError):  # the history check needs it after a rewrite
            git.set_ref(self.mirror, "refs/ggufops/applied", plan.commit)
        self._update(publish=True, phase="healthy", applied_commit=plan.commit,
                     refused_commit=None, refused_reason=None, last_success_at=now,
                     last_error=None, failures=0, next_retry_at=None)
        log.info("applied %s: %s", plan.commit[:12], ", ".join(
            t.display_id for t in plan.targets.values()) or "no models")

    def _forget_refusal(self, commit: str) -> None:
        """Another commit is being applied: the refused one is no longer the desired one."""
        with self._lock:
            if self.status.refused_commit not in (None, commit):
                self.status.refused_commit = self.status.refused_reason = None

    def _refuse(self, commit: str, error: str, reason: str = "invalid") -> None:
        log.error("%s", error)
        self._degrade(error, retry=False, refused_commit=commit, refused_reason=reason)

    def _mismatch(self, error: str, step: str) -> None:
        """Bytes that do not match the registry: in S3 (a permanent fault until someone
        re-pushes them) retried only after --mismatch-retry; in the store, at once."""
        if step != "downloading":
            self._degrade(error, retry=True)
            return
        wait = self.config.mismatch_retry
        self._degrade(f"{error}; not retried for {wait:.0f} s (--mismatch-retry): push a "
                      "fixed commit, or POST /sync once the object is fixed", retry=True,
                      delay=wait)

    def _degrade(self, error: str, *, retry: bool, delay: float | None = None,
                 **fields: Any) -> None:
        """Phase degraded with `error` (and `fields`), in one step; retried after `delay`
        (default: the backoff) when `retry`."""
        now = time.time()
        with self._lock:
            s = self.status
            s.phase, s.last_error, s.last_error_at = "degraded", error, now
            for name, value in fields.items():
                setattr(s, name, value)
            if retry:
                s.failures += 1
                delay = delay if delay is not None else min(
                    self.config.backoff_initial * 2 ** (s.failures - 1), self.config.backoff_max)
                s.next_retry_at = now + delay
            self._save_status()
        if retry:
            log.warning("degraded: %s (retry in %.1f s)", error, delay)

    def _update(self, *, publish: bool = False, **fields: Any) -> None:
        """Set status fields together: a reader never sees half of a change (and, with
        `publish`, /status never shows it before the apply log has it)."""
        with self._lock:
            for name, value in fields.items():
                setattr(self.status, name, value)
            if publish:
                self._save_status()

    def _set_phase(self, phase: str, attempt: int | None = None) -> None:
        self._update(phase=phase)
        if attempt is not None:
            self.log.update(attempt, phase=phase)

    def _set_desired(self, plan: Plan) -> None:
        self._update(desired=plan.summary())
        history = remember_desired(self._desired_history, (t.sha256 for t in plan.artifacts()))
        if history != self._desired_history:
            self._desired_history = history
            with contextlib.suppress(GgufopsError):
                self.log.save_state("desired_history", history)

    # retention

    def _retain(self, plan: Plan, previous: dict[str, dict[str, Any]], now: float) -> None:
        """Keep the last `plan.keep` artifacts per model, and every protected one."""
        for t in plan.artifacts():
            self.log.touch_artifact(t.name, t.version, t.sha256, now)
        protected = {t.sha256 for t in plan.artifacts()}
        for old in previous.values():
            protected.update(a.sha256 for a in Target.from_request("", old).artifacts())
        for state in self._desired_history:
            protected.update(state)
        by_model = {m: self.log.artifacts(m) for m in sorted({a.model for a in
                                                                self.log.artifacts()})}
        for art in evictable(by_model, plan.keep, protected):
            self.log.forget_artifact(art.model, art.sha256)
            self._delete_artifact(art)

    def _delete_artifact(self, art: applylog.StoredArtifact) -> None:

        try:
            ArtifactStore(self.config.store).entry(art.sha256).unlink(missing_ok=True)
        except (OSError, GgufopsError) as e:
            log.warning("could not remove %s@%s from the store: %s", art.model, art.version, e)
            return
        self.metrics.inc("ggufops_agent_store_deletions_total")
        log.info("removed %s@%s (%s…) from the store (retention)", art.model, art.version,
                 art.sha256[:12])

    # reporting

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data = self.status.as_dict()
        data["triggers"] = self.triggers.report()
        data["canary_analysis"] = self.canaries.report()
        if self.fleet is not None:
            data["fleet"] = self.fleet.snapshot_state()
        return dict(redact_data(data))

    def _publish(self) -> None:
        """Persist the status snapshot, for `ggufops agent status` while the agent is down."""
        with self._lock:
            self._save_status()

    def _save_status(self) -> None:
        """The snapshot into the apply log; the caller holds the status lock."""
        with contextlib.suppress(GgufopsError):
            self.log.save_state("status", redact_data(self.status.as_dict()))

    def render_metrics(self) -> str:
        snap = self.snapshot()
        m = self.metrics
        for phase in PHASES:
            m.set("ggufops_agent_phase", (phase,), 1.0 if phase == snap["phase"] else 0.0)
        m.clear("ggufops_agent_model_in_sync")
        for name, entry in snap["models"].items():
            m.set("ggufops_agent_model_in_sync", (name,), 1.0 if entry["in_sync"] else 0.0)
        m.set("ggufops_agent_consecutive_failures", (), snap["consecutive_failures"])
        with self._lock:
            success = self.status.last_success_at
        if success is not None:
            m.set("ggufops_agent_last_success_timestamp_seconds", (), success)
        return redact(m.render())

    def close(self) -> None:
        self.log.close()


def _webhook(config: AgentConfig) -> WebhookReceiver | None:
    if config.webhook_secret is None:
        return None
    return WebhookReceiver(config.webhook_secret, config.branch)


def _still_needed(download: Download, newer: Plan) -> bool:
    """Does the newer state need every file the download is still fetching?"""
    needed = {t.sha256 for t in newer.artifacts()}
    return all(t.sha256 in needed for t in download.pending)


RESUME_LOOKBACK = 500  # applies read back to find when each version came
TRIGGER_SAID = "trigger_said"  # the apply log's state key for TriggerWatch.said()


def arrivals(successes: Sequence[applylog.Attempt]) -> list[tuple[Watched, str]]:
    """What the rollback triggers watched before a restart, from successful applies (newest
    first): each model of the newest whose version came after another version on this
    host, with the time it came and the git span since then (`previous..newest`): a
    rollback in it ended the watch, as a live agent drops its watches on a rollback."""
    found = []
    for model, want, first, before in _unbroken(successes, _versions):
        if before is not None and before[1] is not None:
            older, version = before
            watched = Watched(model, want, version, _applied_at(first), first.commit)
            found.append((watched, f"{older.commit}..{successes[0].commit}"))
    return found


def canary_arrivals(successes: Sequence[applylog.Attempt]) -> dict[str, float]:
    """When this host began serving each model's canary step, from successful applies
    (newest first): the oldest apply of the unbroken run that served the same primary and
    the same canary at the same weight (the canary analysis's progress deadline counts from
    it after a restart)."""
    return {model: _applied_at(first)
            for model, _, first, _ in _unbroken(successes, _canary_steps)}


def _unbroken(successes: Sequence[applylog.Attempt],
              key_of: Callable[[dict[str, dict[str, Any]]], Mapping[str, Any]]
              ) -> Iterator[tuple[str, Any, applylog.Attempt,
                                  tuple[applylog.Attempt, Any] | None]]:
    """For each model `key_of` finds in the newest apply: (model, its key, the oldest apply
    of the unbroken run with that key, (the apply before that run, its key for the model,
    None when absent) or None when the run reaches the oldest apply read). Each apply's
    keys are worked out once."""
    keyed = [key_of(a.models) for a in successes]
    for model, key in (keyed[0].items() if keyed else ()):
        first = 0
        while first + 1 < len(keyed) and keyed[first + 1].get(model) == key:
            first += 1
        before = first + 1
        yield model, key, successes[first], \
            (successes[before], keyed[before].get(model)) if before < len(keyed) else None


def _applied_at(attempt: applylog.Attempt) -> float:
    return attempt.finished_at or attempt.started_at


def _canary_steps(targets: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str, Any]]:
    """model -> (primary version, canary version, weight) of each model with a canary."""
    return {name: (str(want.get("version")), str(canary.get("version")), canary.get("weight"))
            for name, want in targets.items()
            if isinstance(canary := want.get("canary"), dict)}


def watched_live(mirror: Path, env: str, watched: Watched, span: str) -> bool:
    """Would a live agent still watch it: the commit that brought it had rollback triggers
    on for `env`, and no rollback is in `span` (from the version before it to now)?"""
    try:
        return policy_at(mirror, watched.commit, env) is not None \
            and not _rollback_in(mirror, span)
    except GitError:
        return False  # history rewritten since: not known to be a deploy, not watched


def _rollback_in(mirror: Path, span: str) -> bool:
    """Is a commit of the git range `span` a rollback? GitError if the range is unknown."""
    return rollout.is_rollback(git.out(["log", "--format=%B", span], mirror))


def _versions(targets: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: str(want.get("version")) for name, want in targets.items()}


def _served(entry: dict[str, Any]) -> dict[str, Any]:
    served = {k: entry.get(k) for k in ("version", "sha256", "display_id", "loaded_at")}
    canary = entry.get("canary")
    if isinstance(canary, dict):
        served["canary"] = {k: canary.get(k) for k in ("version", "sha256", "display_id",
                                                       "weight", "loaded_at")}
    return served


# --- the process -----------------------------------------------------------------------------


def run_agent(config: AgentConfig, stop: threading.Event,
              ready: Callable[[str | None], None] | None = None) -> None:
    """The `ggufops agent` process: status endpoint in a thread, the loop until `stop`."""
    agent = Agent(config)
    server = None
    if config.status_port is not None:
        server = serve_status(agent, config.status_host, config.status_port,
                              webhook=_webhook(config))

    def wake_on_stop() -> None:
        stop.wait()
        agent.wake()

    threading.Thread(target=wake_on_stop, name="agent-stop", daemon=True).start()
    publishing = fleetstatus.start(agent.fleet, stop) if agent.fleet is not None else None
    try:
        if ready is not None:
            host, port = server.server_address[:2] if server else ("", 0)
            ready(f"http://{host!s}:{port}" if server else None)
        agent.run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if agent.fleet is not None and publishing is not None:
            publishing.join(timeout=15)  # no older PUT may land after the last one
            agent.fleet.publish_if_due(phase="stopped", force=True)  # stopped on purpose
        agent.close()


@contextlib.contextmanager
def running(agent: Agent) -> Iterator[threading.Thread]:
    """Run `agent` in a thread for the duration of the block (tests, the demo)."""
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        agent.wake()
        thread.join(timeout=30)

