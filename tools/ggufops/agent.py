"""`ggufops agent`: the sync agent on an inference host, pull-based like Flux or Argo CD.

Every `interval` seconds (or at once on POST /sync) it asks the git remote for the branch's
commit with one `git ls-remote`. When the commit is new it applies it:

  syncing      fetch the branch into a bare mirror, export registry/ and environments/ at
               that commit, validate them (an invalid state is refused, never applied) and
               compute the plan: which version (sha256, DVC md5) each model should run
  downloading  pull missing artifacts (versions and canaries) into the content-addressed
               store, each verified against the sha256 of its version file (a file already
               there is reused)
  loading      ask the server's admin API to load each model that changes (the server
               verifies the sha256 again and swaps without failing a request), then its
               canary (role "canary", with its weight); a canary the environment no longer
               has is unloaded
  verifying    poll the server's /v1/models until name, version and sha256, and the
               canary's version, sha256 and weight, match
  healthy      recorded in the apply log; the store keeps the last N versions per model

Any failure leaves the previous version serving: the phase becomes `degraded` with the
reason, and the attempt is retried with capped exponential backoff (an invalid commit is
not retried: it waits for a new commit). Every attempt goes to the SQLite apply log.
Between commits each tick also checks that the server still serves the applied state
(a restarted server is reloaded from the store, without downloads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops import applylog, git
from ggufops.agentplan import Plan, Target, export_tree, plan_from_tree, prune_trees
from ggufops.agentstatus import DEFAULT_STATUS_PORT, PHASES, Status, agent_metrics, serve_status
from ggufops.errors import (
    AgentError,
    ChecksumMismatch,
    GgufopsError,
    GitError,
    HealthCheckFailed,
    InvalidDesiredState,
    ServerRefused,
    ServerUnreachable,
    UsageError,
)
from ggufops.httpjson import Reply, error_message, request_json, rfc3339

log = logging.getLogger("ggufops.agent")

TREES_KEPT = 3


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

    def check(self) -> None:
        if self.repo_url.startswith("-"):
            raise UsageError(f"--repo {self.repo_url!r} is not a git URL")
        if self.interval <= 0 or self.backoff_initial <= 0 or self.backoff_max <= 0:
            raise UsageError("--interval and the backoff times must be positive seconds")
        if self.keep is not None and self.keep < 2:
            raise UsageError("--keep must be at least 2 (the serving and the previous version)")

    @property
    def server(self) -> str:
        return self.server_url.rstrip("/")


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

    def unload(self, name: str) -> None:
        reply = self._call("DELETE", f"/admin/models/{name}")
        if reply.status >= 400 and reply.status != 404:
            raise ServerRefused(f"server refused to unload {name}: {error_message(reply)}")

    def unload_canary(self, name: str) -> None:
        reply = self._call("DELETE", f"/admin/models/{name}/canary")
        if reply.status >= 400 and reply.status != 404:
            raise ServerRefused(f"server refused to unload the canary of {name}: "
                                f"{error_message(reply)}")


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
                             remote={"url": config.repo_url, "branch": config.branch,
                                     "reachable": None, "error": None})
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._forced = False
        self._applied: Plan | None = None
        self._applied_targets: dict[str, dict[str, Any]] = {}
        self._last_attempted: str | None = None

    # lifecycle

    def run(self, stop: threading.Event) -> None:
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

    def _sleep(self, stop: threading.Event) -> None:
        delay = self.config.interval
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
        from ggufops.store import ArtifactStore

        store = ArtifactStore(self.config.store)
        store.prepare()
        removed = store.clean_tmp(older_than=0)
        if removed:
            log.info("removed %d temp file(s) of interrupted downloads", len(removed))
        for tmp in self.trees.glob(".tmp-*") if self.trees.is_dir() else ():
            shutil.rmtree(tmp, ignore_errors=True)
        last = self.log.last("success")
        if last is not None and last.environment == self.config.env:
            self._applied_targets = last.models
            with self._lock:
                self.status.applied_commit = last.commit
                self.status.last_success_at = last.finished_at
                self.status.desired = dict(last.models)
        self._publish()

    # one tick

    def tick(self) -> None:
        head = self._check_remote()
        with self._lock:
            forced, self._forced = self._forced, False
            s = self.status
            due = forced or s.next_retry_at is None or time.time() >= s.next_retry_at
            applied, refused = s.applied_commit, s.refused_commit
        if head is None or (head == refused and not forced):
            if due:
                self._reconcile_applied()
        elif head != applied and (due or head != self._last_attempted):
            self.apply(head)  # a new commit is applied at once, a failed one after backoff
        elif head == applied and due and not self._server_in_sync():
            self.apply(head)  # e.g. the server restarted: reload from the store

    def _check_remote(self) -> str | None:
        now = time.time()
        try:
            head = git.ls_remote(self.config.repo_url, self.config.branch,
                                 timeout=self.config.git_timeout)
        except GitError as e:
            self.metrics.inc("ggufops_agent_remote_checks_total", ("unreachable",))
            self._remote_down(str(e), now)
            return None
        self.metrics.inc("ggufops_agent_remote_checks_total", ("ok",))
        with self._lock:
            was_down = self.status.remote.get("reachable") is False
            self.status.remote.update(reachable=True, error=None, last_ok_at=rfc3339(now))
            self.status.last_check_at = now
            self.status.desired_commit = head
        if was_down:
            log.info("git remote %s reachable again", self.config.repo_url)
        return head

    def _remote_down(self, error: str, now: float) -> None:
        with self._lock:
            first = self.status.remote.get("reachable") is not False
            self.status.remote.update(reachable=False, error=error)
            self.status.last_check_at = now
        if first:
            log.warning("%s; keeping the current models", error)
            self._degrade(f"{error}; the server keeps serving the last applied state",
                          retry=False)

    def _reconcile_applied(self) -> None:
        """No commit to apply (remote down, or refused): keep the applied state served."""
        if not self._applied_targets or self._server_in_sync():
            return
        log.info("the server does not serve the applied models; reloading them from the store")
        try:
            self._load_targets(self._applied_targets)
        except GgufopsError as e:
            self._degrade(str(e), retry=True)

    def _server_in_sync(self) -> bool:
        """Does the server serve exactly the applied versions? (updates status.serving)"""
        try:
            serving = self.server.serving()
        except ServerUnreachable:
            with self._lock:
                self.status.serving = {}
            return False
        with self._lock:
            self.status.serving = {n: _served(m) for n, m in serving.items()}
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
        log.info("healthy: serving the state of %s", applied[:12])
        self._publish()

    # applying a commit

    def apply(self, commit: str) -> bool:
        """Apply the branch (at `commit` or newer); True on success."""
        self._last_attempted = commit
        started = time.monotonic()
        attempt = self.log.start(commit, self.config.env, {})
        step = "syncing"
        try:
            self._set_phase(step, attempt)
            plan = self._plan()
            self.log.update(attempt, models=plan.requests())
            self._set_desired(plan)
            for step, action in self._steps(plan):
                self._set_phase(step, attempt)
                action(plan)
        except InvalidDesiredState as e:
            self._finish(attempt, "refused", step, str(e), started)
            self._refuse(commit, str(e))
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
        self._finish(attempt, "success", "healthy", None, started)
        self._succeed(plan)
        return True

    def _steps(self, plan: Plan) -> list[tuple[str, Callable[[Plan], None]]]:
        return [("downloading", self._download), ("loading", self._load),
                ("verifying", self._verify)]

    def _plan(self) -> Plan:
        try:
            commit = git.mirror_fetch(self.mirror, self.config.repo_url, self.config.branch,
                                      timeout=max(60.0, self.config.git_timeout))
        except GitError as e:
            raise AgentError(f"fetching {self.config.repo_url} failed: {e}; retrying") from None
        with self._lock:
            self.status.desired_commit = commit
        tree = export_tree(self.mirror, commit, self.trees)
        try:
            plan = plan_from_tree(tree, commit, self.config.env, self.config.keep)
        except InvalidDesiredState:
            raise
        except GgufopsError as e:
            raise InvalidDesiredState(f"commit {commit[:12]} cannot be read: {e}") from None
        keep = {commit} | ({self._applied.commit} if self._applied else set())
        prune_trees(self.trees, keep | {p.name for p in self._recent_trees()})
        return plan

    def _recent_trees(self) -> list[Path]:
        trees = [p for p in self.trees.iterdir() if not p.name.startswith(".")] \
            if self.trees.is_dir() else []
        return sorted(trees, key=lambda p: p.stat().st_mtime)[-TREES_KEPT:]

    def _download(self, plan: Plan) -> None:
        from ggufops.store import ArtifactStore

        store = ArtifactStore(self.config.store)
        missing = [t for t in plan.artifacts() if not store.has(t.sha256, t.size)]
        for target in missing:
            log.info("downloading %s (%d bytes)", target.display_id, target.size)
        if not missing:
            return
        for done in download_in_child(self.config.store, plan.tree, missing,
                                      self.config.s3_endpoint):
            self.metrics.inc("ggufops_agent_downloads_total")
            self.metrics.inc("ggufops_agent_download_bytes_total", (), done.size)
            self.log.touch_artifact(done.name, done.version, done.sha256)

    def _load(self, plan: Plan) -> None:
        self._load_targets(plan.requests())

    def _load_targets(self, targets: dict[str, dict[str, Any]]) -> None:
        serving = self.server.serving()
        for name, want in sorted(targets.items()):
            target = Target.from_request(name, want)
            entry = serving.get(name) or {}
            if not target.primary_served_by(entry):
                self._load_one(target)
            if target.canary_served_by(entry):
                continue
            if target.canary is None:
                log.info("asking the server to unload the canary of %s", name)
                self.server.unload_canary(name)
            else:
                self._load_one(target.canary)

    def _load_one(self, target: Target) -> None:
        canary = f" as canary (weight {target.weight})" if target.weight is not None else ""
        log.info("asking the server to load %s%s", target.display_id, canary)
        try:
            self.server.load(target)
        except ChecksumMismatch:
            self._evict(target.sha256)
            raise

    def _evict(self, sha256: str) -> None:
        """A stored file that fails verification is removed, so the retry downloads it."""
        from ggufops.store import ArtifactStore

        with contextlib.suppress(OSError, GgufopsError):
            ArtifactStore(self.config.store).entry(sha256).unlink(missing_ok=True)
            log.warning("removed %s… from the store: it failed verification", sha256[:12])

    def _verify(self, plan: Plan) -> None:
        deadline = time.monotonic() + self.config.timeout
        while True:
            serving = self.server.serving()
            with self._lock:
                self.status.serving = {n: _served(m) for n, m in serving.items()}
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

    # outcomes

    def _finish(self, attempt: int, outcome: str, phase: str, error: str | None,
                started: float) -> None:
        self.log.finish(attempt, outcome, phase, error)
        self.metrics.inc("ggufops_agent_applies_total", (outcome,))
        self.metrics.observe("ggufops_agent_apply_duration_seconds", (outcome,),
                             time.monotonic() - started)

    def _succeed(self, plan: Plan) -> None:
        now = time.time()
        previous = self._applied_targets
        self._applied = plan
        self._applied_targets = {n: t.load_request() for n, t in plan.targets.items()}
        with self._lock:
            s = self.status
            s.applied_commit, s.refused_commit, s.last_success_at = plan.commit, None, now
            s.last_error, s.failures, s.next_retry_at = None, 0, None
        self._set_phase("healthy")
        log.info("applied %s: %s", plan.commit[:12], ", ".join(
            t.display_id for t in plan.targets.values()) or "no models")
        self._retain(plan, previous, now)
        self._publish()

    def _refuse(self, commit: str, error: str) -> None:
        log.error("%s", error)
        with self._lock:
            self.status.refused_commit = commit
        self._degrade(error, retry=False)

    def _degrade(self, error: str, *, retry: bool) -> None:
        now = time.time()
        with self._lock:
            s = self.status
            s.last_error, s.last_error_at = error, now
            if retry:
                s.failures += 1
                delay = min(self.config.backoff_initial * 2 ** (s.failures - 1),
                            self.config.backoff_max)
                s.next_retry_at = now + delay
        if retry:
            log.warning("degraded: %s (retry in %.1f s)", error, delay)
        self._set_phase("degraded")
        self._publish()

    def _set_phase(self, phase: str, attempt: int | None = None) -> None:
        with self._lock:
            self.status.phase = phase
        if attempt is not None:
            self.log.update(attempt, phase=phase)

    def _set_desired(self, plan: Plan) -> None:
        with self._lock:
            self.status.desired = plan.summary()

    # retention

    def _retain(self, plan: Plan, previous: dict[str, dict[str, Any]], now: float) -> None:
        """Keep the last `plan.keep` artifacts per model; never the serving or previous one."""
        for t in plan.artifacts():
            self.log.touch_artifact(t.name, t.version, t.sha256, now)
        keep = {t.sha256 for t in plan.artifacts()}
        for old in previous.values():
            keep.update(a.sha256 for a in Target.from_request("", old).artifacts())
        stale: list[applylog.StoredArtifact] = []
        for model in sorted({a.model for a in self.log.artifacts()}):
            arts = self.log.artifacts(model)
            keep.update(a.sha256 for a in arts[:plan.keep])
            stale.extend(arts[plan.keep:])
        for art in stale:
            self.log.forget_artifact(art.model, art.sha256)
            if art.sha256 not in keep:
                self._delete_artifact(art)

    def _delete_artifact(self, art: applylog.StoredArtifact) -> None:
        from ggufops.store import ArtifactStore

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
            return self.status.as_dict()

    def _publish(self) -> None:
        """Persist the status snapshot, for `ggufops agent status` while the agent is down."""
        with contextlib.suppress(GgufopsError):
            self.log.save_state("status", self.snapshot())

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
        return m.render()

    def close(self) -> None:
        self.log.close()


def _served(entry: dict[str, Any]) -> dict[str, Any]:
    served = {k: entry.get(k) for k in ("version", "sha256", "display_id", "loaded_at")}
    canary = entry.get("canary")
    if isinstance(canary, dict):
        served["canary"] = {k: canary.get(k) for k in ("version", "sha256", "display_id",
                                                       "weight", "loaded_at")}
    return served


# --- downloads, in a child process ------------------------------------------------------------
# boto3 and its S3 client add ~25 MB that an idle agent would keep for good; a child process
# returns that memory after each download batch (and dies with the agent: PR_SET_PDEATHSIG).

_DOWNLOAD_SCRIPT = "from ggufops.agent import download_main; raise SystemExit(download_main())"


def download_in_child(store: Path, tree: Path, targets: list[Target],
                      s3_endpoint: str | None) -> Iterator[Target]:
    """Pull `targets` (verified) into `store` in a child; yield each one once it is stored."""
    request = {"store": str(store), "tree": str(tree), "s3_endpoint": s3_endpoint,
               "targets": [dataclasses.asdict(t) for t in targets]}
    by_sha = {t.sha256: t for t in targets}
    proc = subprocess.Popen([sys.executable, "-c", _DOWNLOAD_SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, preexec_fn=_die_with_parent())  # noqa: PLW1509
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    error: GgufopsError | None = None
    for line in proc.stdout:
        event = json.loads(line)
        if "done" in event:
            yield by_sha[event["done"]]
        else:
            error = _error_from(event)
    code = proc.wait()
    if error is not None:
        raise error
    if code != 0:
        raise AgentError(f"the download process exited with status {code}; see the agent's log")


def _error_from(event: dict[str, Any]) -> GgufopsError:
    from ggufops import errors

    cls = getattr(errors, str(event.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, GgufopsError)):
        cls = AgentError
    return cls(str(event.get("message")))


def download_main() -> int:
    """The child: read the request on stdin, pull each target, report JSON lines."""
    from ggufops import s3config
    from ggufops.artifacts import S3Remote
    from ggufops.pull import pull_object

    request = json.load(sys.stdin)
    try:
        settings = s3config.resolve(Path(request["tree"]))
        if request["s3_endpoint"]:
            settings = dataclasses.replace(settings, endpoint_url=request["s3_endpoint"])
        remote = S3Remote(settings)
        for t in request["targets"]:
            pull_object(Path(request["store"]), sha256=t["sha256"], dvc_md5=t["dvc_md5"],
                        remote=remote, size=t["size"], label=t["display_id"], progress=False)
            print(json.dumps({"done": t["sha256"]}), flush=True)
    except GgufopsError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
        return 1
    return 0


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn: the child gets SIGKILL when the agent dies (Linux prctl)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return preexec


# --- the process -----------------------------------------------------------------------------


def run_agent(config: AgentConfig, stop: threading.Event,
              ready: Callable[[str | None], None] | None = None) -> None:
    """The `ggufops agent` process: status endpoint in a thread, the loop until `stop`."""
    agent = Agent(config)
    server = None
    if config.status_port is not None:
        server = serve_status(agent, config.status_host, config.status_port)

    def wake_on_stop() -> None:
        stop.wait()
        agent.wake()

    threading.Thread(target=wake_on_stop, name="agent-stop", daemon=True).start()
    try:
        if ready is not None:
            host, port = server.server_address[:2] if server else ("", 0)
            ready(f"http://{host!s}:{port}" if server else None)
        agent.run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
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

