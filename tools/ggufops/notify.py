"""Webhook notifications: JSON events POSTed in the background, signed with HMAC-SHA256.

`X-Ggufops-Signature-256: sha256=<hex>` is the HMAC-SHA256 of the exact body bytes with the
shared secret (as GitHub signs its webhooks), when a secret is configured. The `slack`
format sends `{"text": "..."}` (a Slack incoming webhook, or anything compatible) instead
of the event itself. Sending never blocks the caller: events wait in a bounded queue for
one sender thread; when the queue is full the event is dropped and counted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops.errors import UsageError
from ggufops.redact import redact

log = logging.getLogger("ggufops.notify")

SIGNATURE_HEADER = "X-Ggufops-Signature-256"
FORMATS = ("json", "slack")
QUEUE_SIZE = 100


def signature(secret: bytes, body: bytes) -> str:
    """The header's value for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Does `header` sign `body` with `secret`? Constant-time; an empty or non-ASCII header
    is simply wrong (used by the agent's webhook receiver, and by receivers of ours)."""
    if not header:
        return False
    given = header.strip().encode("utf-8", "replace")
    return hmac.compare_digest(signature(secret, body).encode(), given)


@dataclass(frozen=True)
class NotifyConfig:
    url: str
    secret_file: Path | None = None
    format: str = "json"

    def secret(self) -> bytes | None:
        if self.secret_file is None:
            return None
        secret = self.secret_file.read_bytes().strip()
        if not secret:
            raise UsageError(f"--notify-secret-file {self.secret_file} is empty; put the "
                             "shared secret in it (e.g. `openssl rand -hex 32`)")
        return secret


def slack_text(event: dict[str, Any]) -> str:
    """One line a person reads in a channel: a trigger's event or a canary decision's."""
    if "verdict" in event:
        return _canary_text(event)
    what = "rolled back" if event.get("action") == "rollback" else "alert"
    return (f"ggufops {what}: {event.get('model')}@{event.get('version')} on "
            f"{event.get('host')}: {event.get('metric')} = {event.get('value'):.4g} "
            f"(threshold {event.get('threshold')}, window {event.get('window_s')} s) "
            f"- {event.get('outcome')}")


def _canary_text(event: dict[str, Any]) -> str:
    verdict = event["verdict"]
    return (f"ggufops canary analysis {event.get('kind')}: {event.get('model')} canary "
            f"{event.get('canary')} at {event.get('weight')}% -> {event.get('next_weight')}% on "
            f"{event.get('host')}: {verdict.get('note')} - {event.get('outcome')}")


class Notifier:
    """`send(event)` returns at once; a daemon thread POSTs the events in order."""

    def __init__(self, config: NotifyConfig, timeout: float = 10.0) -> None:
        if not config.url.startswith(("http://", "https://")):
            raise UsageError(f"--notify-url {redact(config.url)!r} must be an http(s) URL")
        if config.format not in FORMATS:
            raise UsageError(f"--notify-format {config.format!r}: use json or slack")
        self.config = config
        self.timeout = timeout
        self._secret = config.secret()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._closed = threading.Event()
        threading.Thread(target=self._run, name="notify", daemon=True).start()

    def send(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def body(self, event: dict[str, Any]) -> bytes:
        payload = {"text": slack_text(event)} if self.config.format == "slack" else event
        return json.dumps(payload, sort_keys=True, default=str).encode()

    def close(self) -> None:
        """Send nothing more (events still queued are dropped)."""
        self._closed.set()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if not self._closed.is_set():
                self._post(event)

    def _post(self, event: dict[str, Any]) -> None:
        body = self.body(event)
        headers = {"Content-Type": "application/json", "User-Agent": "ggufops-agent"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked: http(s)
            self.config.url, body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310
                reply.read()
            self.sent += 1
        except OSError as e:  # HTTPError and URLError are OSErrors
            self.failed += 1
            log.warning("notification to %s failed: %s", redact(self.config.url), redact(str(e)))
