"""Small JSON-over-HTTP pieces shared by `ggufops serve` and the sync agent (stdlib only).

Server side: a request handler base with JSON replies (Content-Length, keep-alive) and
server-sent events, and a threading server that does not wait for open connections on
shutdown. Client side: one JSON request with urllib and a timeout.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("ggufops.http")

MAX_BODY = 16 * 1024 * 1024


def rfc3339(ts: float) -> str:
    """A UNIX time as RFC 3339 UTC with microseconds: 2026-11-21T23:40:00.000000Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HttpError(Exception):
    """An error answered as JSON: {"error": {"message", "type", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "code": self.status}}


def read_json_body(handler: BaseHTTPRequestHandler) -> Any:
    """The request's JSON body ({} when empty); HttpError 400/413 otherwise."""
    try:
        length = int(handler.headers.get("Content-Length") or 0)
    except ValueError:
        raise HttpError(400, "Content-Length is not a number") from None
    if length > MAX_BODY:
        raise HttpError(413, f"request body over {MAX_BODY} bytes")
    raw = handler.rfile.read(length) if length else b""
    try:
        return json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "the request body is not valid JSON") from None


class JsonHandler(BaseHTTPRequestHandler):
    """JSON replies with Content-Length (keep-alive) and server-sent events (then close)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send_json(self, status: int, body: Any) -> None:
        self.send_bytes(status, (json.dumps(body) + "\n").encode(), "application/json")

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def send_event(self, data: str) -> None:
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def path_only(self) -> str:
        return unquote(urlsplit(self.path).path).rstrip("/") or "/"


class QuietServer(ThreadingHTTPServer):
    """A thread per connection; shutdown does not wait for open keep-alive connections."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


@dataclass(frozen=True)
class Reply:
    status: int
    data: Any


def request_json(method: str, url: str, body: Any = None, *, token: str | None = None,
                 timeout: float = 10.0) -> Reply:
    """One HTTP request with a JSON body; the status and the decoded JSON reply.

    HTTP error statuses are returned, not raised; OSError (refused, timeout) propagates.
    """
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) URLs only
            return Reply(resp.status, _decode(resp.read()))
    except urllib.error.HTTPError as e:
        return Reply(e.code, _decode(e.read()))


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return {"raw": raw[:200].decode(errors="replace")}


def error_message(reply: Reply) -> str:
    """The message of an {"error": {"message"}} reply, or a description of the reply."""
    data = reply.data
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message") or data["error"])
    return f"HTTP {reply.status}: {str(data)[:200]}"
