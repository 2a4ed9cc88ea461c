"""What the sync agent reports: its status, Prometheus metrics and the status endpoint.

Phases: idle (started, nothing checked yet), syncing (fetching and validating a commit),
downloading, loading, verifying, healthy (the remote's commit is applied and served),
degraded (the last attempt failed, the remote is unreachable or its commit was refused:
the previous state keeps serving; `last_error` says why).

What is served is what the server answered at the agent's last look (every tick, and
every interval during a download): `serving_version` is None, and `server.error` says why,
while the server does not answer. Nothing here shows the credentials of the git URL: every
snapshot goes through ggufops.redact.

The endpoint serves GET /status (JSON), GET /metrics, GET /healthz and POST /sync (a
webhook: check the remote now). `ggufops agent status` reads the same snapshot from the
apply log on disk, or from a running agent.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ggufops.agent import applylog
from ggufops.agent.webhook import MAX_BODY as WEBHOOK_MAX_BODY
from ggufops.agent.webhook import WebhookReceiver
from ggufops.errors import AgentError
from ggufops.httpjson import (
    HttpError,
    JsonHandler,
    Limits,
    QuietServer,
    error_message,
    read_body,
    read_json_body,
    request_json,
    rfc3339,
)
from ggufops.redact import redact, redact_data
from ggufops.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ggufops.serve.metrics import Metrics

PHASES = ("idle", "syncing", "downloading", "waiting", "loading", "verifying", "healthy",
          "degraded")  # waiting: for the earlier rollout waves (rollout.py)
DEFAULT_STATUS_PORT = 9180


@dataclass
class Status:
    """What GET /status reports; times are UNIX seconds (rendered as RFC 3339)."""

    phase: str = "idle"
    environment: str = ""
    desired_commit: str | None = None
    applied_commit: str | None = None
    refused_commit: str | None = None
    refused_reason: str | None = None  # e.g. invalid, unsigned, history-rewritten (trust.py)
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    last_check_at: float | None = None
    remote: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    desired: dict[str, dict[str, Any]] = field(default_factory=dict)
    serving: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: int = 0
    next_retry_at: float | None = None
    started_at: float = field(default_factory=time.time)

    def models(self) -> dict[str, dict[str, Any]]:
        """Per model: desired vs serving version; `desired_canary`/`serving_canary`
        ({version, sha256, weight} or None) when either side has a canary."""
        result = {}
        for name in sorted(set(self.desired) | set(self.serving)):
            want, have = self.desired.get(name, {}), self.serving.get(name, {})
            want_canary, have_canary = _canary(want), _canary(have)
            entry = {
                "desired_version": want.get("version"), "desired_sha256": want.get("sha256"),
                "serving_version": have.get("version"), "serving_sha256": have.get("sha256"),
                "in_sync": bool(want) and want.get("version") == have.get("version")
                and want.get("sha256") == have.get("sha256") and want_canary == have_canary,
            }  # fmt: skip
            if want_canary or have_canary:
                entry.update(desired_canary=want_canary, serving_canary=have_canary)
            result[name] = entry
        return result

    def as_dict(self) -> dict[str, Any]:
        def when(ts: float | None) -> str | None:
            return rfc3339(ts) if ts is not None else None

        return {
            "phase": self.phase, "environment": self.environment,
            "desired_commit": self.desired_commit, "applied_commit": self.applied_commit,
            "refused_commit": self.refused_commit, "refused_reason": self.refused_reason,
            "models": self.models(),
            "last_error": self.last_error, "last_error_at": when(self.last_error_at),
            "last_success_at": when(self.last_success_at),
            "last_check_at": when(self.last_check_at), "remote": self.remote,
            "server": self.server,
            "consecutive_failures": self.failures, "next_retry_at": when(self.next_retry_at),
            "started_at": when(self.started_at),
        }  # fmt: skip


def _canary(entry: dict[str, Any]) -> dict[str, Any] | None:
    canary = entry.get("canary")
    if not isinstance(canary, dict):
        return None
    return {k: canary.get(k) for k in ("version", "sha256", "weight")}


def agent_metrics() -> Metrics:
    m = Metrics()
    m.gauge("ggufops_agent_phase", "1 for the agent's current phase.", ("phase",))
    m.counter("ggufops_agent_applies_total", "Apply attempts by outcome.", ("outcome",))
    m.histogram("ggufops_agent_apply_duration_seconds", "Duration of apply attempts.",
                ("outcome",))
    m.counter("ggufops_agent_remote_checks_total", "git ls-remote checks by result.",
              ("result",))
    m.counter("ggufops_agent_downloads_total", "Artifacts downloaded into the store.")
    m.counter("ggufops_agent_download_bytes_total", "Bytes of downloaded artifacts.")
    m.counter("ggufops_agent_store_deletions_total", "Artifacts removed by retention.")
    m.gauge("ggufops_agent_model_in_sync", "1 if the server serves the desired version.",
            ("model",))
    m.gauge("ggufops_agent_consecutive_failures", "Failed attempts since the last success.")
    m.gauge("ggufops_agent_last_success_timestamp_seconds", "When an apply last succeeded.")
    return m


# --- the endpoint -----------------------------------------------------------------------------


class StatusSource(Protocol):
    """What the endpoint needs from the agent."""

    def snapshot(self) -> dict[str, Any]: ...

    def render_metrics(self) -> str: ...

    def trigger(self) -> None: ...


class AgentHandler(JsonHandler):
    """GET /status, /metrics, /healthz; POST /sync (the webhook: check the remote now)."""

    agent: StatusSource
    webhook: WebhookReceiver | None = None  # with a secret: POST /sync is GitHub's webhook
    limits = Limits(max_body=64 * 1024, max_connections=64,
                    length_required=False)  # POST /sync takes no body (`curl -X POST`)

    def do_GET(self) -> None:
        path = self.path_only()
        if path == "/status":
            self.send_json(200, self.agent.snapshot())
        elif path == "/metrics":
            self.send_bytes(200, self.agent.render_metrics().encode(), METRICS_CONTENT_TYPE)
        elif path == "/healthz":
            self.send_json(200, {"status": "ok", "phase": self.agent.snapshot()["phase"]})
        else:
            self.send_json(404, HttpError(404, f"no route GET {path}", "not_found_error").body())

    def do_POST(self) -> None:
        path = self.path_only()
        if path == "/sync" and self.webhook is not None:
            self._webhook(self.webhook)
            return
        try:
            read_json_body(self)
        except HttpError as e:
            self.send_json(e.status, e.body())
            return
        if path == "/sync":
            self.agent.trigger()
            self.send_json(202, {"triggered": True})
        else:
            self.send_json(404, HttpError(404, f"no route POST {path}", "not_found_error").body())


    def _webhook(self, webhook: WebhookReceiver) -> None:
        try:
            body = read_body(self)
        except HttpError as e:
            self.send_json(e.status, e.body())
            return
        reply = webhook.handle(dict(self.headers.items()), body)
        if reply.trigger:
            self.agent.trigger()
        self.send_json(reply.status, reply.body)


def status_server(agent: StatusSource, host: str, port: int,
                  webhook: WebhookReceiver | None = None) -> QuietServer:
    bound: dict[str, Any] = {"agent": agent, "webhook": webhook}
    if webhook is not None:
        bound["limits"] = replace(AgentHandler.limits, max_body=WEBHOOK_MAX_BODY)
    handler = type("BoundAgentHandler", (AgentHandler,), bound)
    try:
        return QuietServer((host, port), handler)
    except OSError as e:
        raise AgentError(f"cannot listen on {host}:{port} for the status endpoint: "
                         f"{e.strerror}; pick another --status-port") from None


def serve_status(agent: StatusSource, host: str, port: int,
                 webhook: WebhookReceiver | None = None) -> QuietServer:
    """Start the endpoint in a daemon thread; the caller shuts it down."""
    server = status_server(agent, host, port, webhook)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                     name="agent-status", daemon=True).start()
    return server


# --- `ggufops agent status` -------------------------------------------------------------------


def default_state_dir() -> Path:
    """systemd's $STATE_DIRECTORY (StateDirectory=), else ~/.local/state/ggufops/agent."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path.home() / ".local" / "state" / "ggufops" / "agent"


def fetch_status(url: str) -> dict[str, Any]:
    """The live status of a running agent (GET <url>/status)."""
    try:
        reply = request_json("GET", url.rstrip("/") + "/status", timeout=5.0)
    except OSError as e:
        raise AgentError(f"no agent answers at {url} ({getattr(e, 'reason', e)}); is it "
                         "running? (systemctl status ggufops-agent)") from None
    if reply.status != 200:
        raise AgentError(f"{url}/status answered {error_message(reply)}")
    return {"status": redact_data(reply.data), "attempts": []}


def read_status(state_dir: Path, limit: int = 10) -> dict[str, Any]:
    """The last status snapshot and the recent attempts, from the apply log on disk."""
    db = applylog.ApplyLog(state_dir / applylog.FILE_NAME, readonly=True)
    try:
        return dict(redact_data({"status": db.load_state("status"),
                                 "attempts": [a.as_dict() for a in db.recent(limit)]}))
    finally:
        db.close()


def _canary_text(canary: dict[str, Any] | None) -> str:
    return f"{canary.get('version')} at {canary.get('weight')}%" if canary else "-"


def format_status(report: dict[str, Any]) -> str:
    status = report.get("status") or {}
    lines = [
        f"phase:           {status.get('phase', 'unknown')}",
        f"environment:     {status.get('environment', '-')}",
        f"desired commit:  {(status.get('desired_commit') or '-')[:12]}",
        f"applied commit:  {(status.get('applied_commit') or '-')[:12]}",
        f"last success:    {status.get('last_success_at') or '-'}",
        f"last error:      {status.get('last_error') or '-'}",
    ]
    if status.get("refused_commit"):
        lines.append(f"refused commit:  {status['refused_commit'][:12]} "
                     f"({status.get('refused_reason') or 'invalid'})")
    remote = status.get("remote") or {}
    if remote.get("reachable") is False:
        lines.append(f"git remote:      UNREACHABLE ({remote.get('error')})")
    server = status.get("server") or {}
    if server.get("reachable") is False:
        lines.append(f"server:          UNREACHABLE ({server.get('error')})")
    for name, m in (status.get("models") or {}).items():
        mark = "ok" if m.get("in_sync") else "OUT OF SYNC"
        lines.append(f"model {name}: desired {m.get('desired_version') or '-'}, serving "
                     f"{m.get('serving_version') or '-'} ({mark})")
        if "desired_canary" in m:
            lines.append(f"  canary: desired {_canary_text(m['desired_canary'])}, serving "
                         f"{_canary_text(m.get('serving_canary'))}")
    lines.append("recent applies:")
    for a in report.get("attempts") or []:
        error = f"  {a['error']}" if a.get("error") else ""
        lines.append(f"  #{a['id']} {rfc3339(a['started_at'])[:19]}Z {a['commit'][:12]} "
                     f"{a['outcome']:<11} {a['phase']}{error}")
    return redact("\n".join(lines))
