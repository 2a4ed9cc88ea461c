"""`POST /sync` on the agent's status endpoint as a GitHub webhook receiver.

With a secret (`--webhook-secret-file`), every request must carry GitHub's
`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body, keyed by the secret>`, compared in
constant time; a missing or wrong one is answered 401 and does nothing. Then:

  X-GitHub-Delivery  required; an id already received is a replay: 409, nothing done
                     (the last `REMEMBERED` ids are kept, oldest forgotten first)
  X-GitHub-Event     ping -> 200; push to `refs/heads/<watched branch>` -> 202 and the agent
                     checks the remote now; a push to another branch or any other event ->
                     202 with `ignored` (GitHub then shows the delivery as successful)

The payload is never trusted for what to apply: a valid push only makes the agent look at
the git remote at once, where the commit is read and (with --trust) verified like any other.
GitHub's HMAC covers the body, not the headers, so a recorded delivery could be sent again
under a new id; it can at worst make the agent check the remote early.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import notify
from ggufops.errors import TrustError
from ggufops.httpjson import HttpError

SIGNATURE_HEADER = "X-Hub-Signature-256"
DELIVERY_HEADER = "X-GitHub-Delivery"
EVENT_HEADER = "X-GitHub-Event"
MAX_BODY = 1024 * 1024  # GitHub caps payloads at 25 MB; a push is a few KiB to some 100 KiB
REMEMBERED = 4096  # delivery ids kept for replay detection
MIN_SECRET = 16


def read_secret(path: Path) -> bytes:
    """The webhook secret in `path` (surrounding whitespace removed); TrustError if unusable."""
    try:
        secret = path.read_bytes().strip()
    except OSError as e:
        raise TrustError(f"cannot read the webhook secret file {path}: {e.strerror}; create it "
                         "(e.g. `openssl rand -hex 32 > FILE`) and give GitHub the same "
                         "secret") from None
    if len(secret) < MIN_SECRET:
        raise TrustError(f"the webhook secret in {path} is shorter than {MIN_SECRET} bytes; "
                         "write a longer random one (e.g. `openssl rand -hex 32`)")
    return secret


def sign(secret: bytes, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub sends for `body` (the same HMAC our own
    notifications carry)."""
    return notify.signature(secret, body)


@dataclass
class Deliveries:
    """The last `limit` delivery ids, for replay detection (thread-safe)."""

    limit: int = REMEMBERED
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def first_time(self, delivery: str) -> bool:
        """Remember `delivery`; False if it was already remembered."""
        with self._lock:
            if delivery in self._seen:
                return False
            self._seen[delivery] = None
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)
            return True


@dataclass(frozen=True)
class WebhookReply:
    """What to answer, and whether the agent should check the remote now."""

    status: int
    body: dict[str, Any]
    trigger: bool = False


def _error(status: int, message: str, kind: str = "invalid_request_error") -> WebhookReply:
    return WebhookReply(status, HttpError(status, message, kind).body())


def parse_payload(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A webhook's JSON payload, sent as application/json or as a form's `payload` field."""
    raw = body
    if (content_type or "").split(";")[0].strip() == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        raw = (fields.get("payload") or [""])[0].encode()
    try:
        payload = json.loads(raw)
    except ValueError:
        raise HttpError(400, "the webhook payload is not JSON") from None
    if not isinstance(payload, dict):
        raise HttpError(400, "the webhook payload is not a JSON object")
    return payload


class _Headers(dict[str, str]):
    """Header names are case-insensitive (a proxy may lower-case them)."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


class WebhookReceiver:
    """Decides what one signed webhook delivery does (the HTTP part is the handler's)."""

    def __init__(self, secret: bytes, branch: str, remember: int = REMEMBERED) -> None:
        self.secret = secret
        self.ref = f"refs/heads/{branch}"
        self.deliveries = Deliveries(remember)

    def handle(self, raw_headers: Mapping[str, str], body: bytes) -> WebhookReply:
        headers = _Headers({k.lower(): v for k, v in raw_headers.items()})
        if not notify.verify(self.secret, body, headers.get(SIGNATURE_HEADER)):
            return _error(401, f"missing or wrong {SIGNATURE_HEADER}: sign the body with the "
                          "webhook secret (GitHub does when the hook's secret is set)",
                          "authentication_error")
        delivery = (headers.get(DELIVERY_HEADER) or "").strip()
        if not delivery or len(delivery) > 128:
            return _error(400, f"missing or oversized {DELIVERY_HEADER} header")
        if not self.deliveries.first_time(delivery):
            return _error(409, f"delivery {delivery} was already received (a replay); ignored",
                          "conflict_error")
        try:
            return self._event((headers.get(EVENT_HEADER) or "").strip(), headers, body)
        except HttpError as e:
            return WebhookReply(e.status, e.body())

    def _event(self, event: str, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        if not event:
            raise HttpError(400, f"missing {EVENT_HEADER} header")
        if event == "ping":
            return WebhookReply(200, {"pong": True, "watching": self.ref})
        if event != "push":
            return WebhookReply(202, {"ignored": f"{event} event; only push events trigger"})
        ref = parse_payload(body, headers.get("Content-Type")).get("ref")
        if ref != self.ref:
            return WebhookReply(202, {"ignored": f"push to {ref}; this agent watches {self.ref}"})
        return WebhookReply(202, {"triggered": True, "ref": ref}, trigger=True)
