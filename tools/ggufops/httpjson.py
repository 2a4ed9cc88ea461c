"""Small JSON-over-HTTP pieces shared by `ggufops serve` and the sync agent (stdlib only).

Server side: a request handler base with JSON replies (Content-Length, keep-alive) and
server-sent events, and a threading server that does not wait for open connections on
shutdown. Both are bounded (`Limits`), because both listen before anyone authenticates:
  * a connection waits at most `idle_timeout` s for a request to start, then has
    `header_timeout` s to send its request line, headers and body (a deadline for the
    whole request, not per read: a client that trickles a byte at a time is cut too);
  * a body needs a Content-Length (411 without one, unless the server takes bodiless
    POSTs such as the agent's `curl -X POST .../sync`; 400 if it is not a number >= 0;
    413 above `max_body`), is read only after the route has authenticated the request,
    and must be JSON nested at most `max_depth` deep (400, never a 500);
  * at most `max_connections` connections are served at once; one more is answered 503
    and closed by the accepting thread, so a flood cannot exhaust threads or memory;
  * a reply that the client does not read is given up after `write_timeout` s.
Client side: one JSON request with urllib and a timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("ggufops.http")

MAX_BODY = 16 * 1024 * 1024
DISCARD_MAX = 64 * 1024  # an unread body up to this size is drained to keep the connection


@dataclass(frozen=True)
class Limits:
    """What one server accepts from its clients (see the module docstring)."""

    max_body: int = MAX_BODY
    max_depth: int = 64
    max_connections: int = 256
    header_timeout: float = 10.0
    idle_timeout: float = 15.0
    write_timeout: float = 60.0
    length_required: bool = True  # False: a POST without Content-Length has an empty body


def rfc3339(ts: float) -> str:
    """A UNIX time as RFC 3339 UTC with microseconds: 2026-11-21T23:40:00.000000Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HttpError(Exception):
    """An error answered in OpenAI's envelope: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", *,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param,
                          "code": self.code}}


def json_depth_ok(value: Any, limit: int) -> bool:
    """Whether `value` (parsed JSON) nests at most `limit` arrays/objects deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item \
            if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def parse_json(raw: bytes, max_depth: int) -> Any:
    """`raw` as JSON ({} when empty); HttpError 400 when invalid or nested too deep."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except RecursionError:
        value = None
        deep = True
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "the request body is not valid JSON") from None
    else:
        deep = not json_depth_ok(value, max_depth)
    if deep:
        raise HttpError(400, f"the request body nests JSON deeper than {max_depth} levels")
    return value


def read_body(handler: JsonHandler) -> bytes:
    """The request's raw body within the handler's limits; HttpError 400/411/413.

    Call it only once the request is authorized: nothing is read before."""
    length = handler.content_length()
    if length > handler.limits.max_body:
        handler.close_connection = True  # the body is never read
        raise HttpError(413, f"the request body is {length} bytes, over the limit of "
                        f"{handler.limits.max_body}", code="request_too_large")
    raw = handler.rfile.read(length) if length else b""
    if len(raw) != length:
        handler.close_connection = True
        raise HttpError(400, f"the request body ended after {len(raw)} of {length} bytes")
    handler.body_consumed = True
    handler.request_complete()
    return raw


def read_json_body(handler: JsonHandler) -> Any:
    """The request's JSON body ({} when empty); HttpError 400/411/413 otherwise."""
    return parse_json(read_body(handler), handler.limits.max_depth)


class JsonHandler(BaseHTTPRequestHandler):
    """JSON replies with Content-Length (keep-alive) and server-sent events (then close)."""

    protocol_version = "HTTP/1.1"
    limits = Limits()
    body_consumed = True
    server: QuietServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # --- one request, within its deadlines ------------------------------------------------

    def handle_one_request(self) -> None:
        if not self._request_starts():
            self.close_connection = True
            return
        self.server.deadlines.arm(self.connection, self.limits.header_timeout)
        self.connection.settimeout(self.limits.header_timeout)
        self.body_consumed = True
        try:
            super().handle_one_request()
        except TimeoutError:
            self.close_connection = True
        finally:
            self.server.deadlines.disarm(self.connection)
        if not self.close_connection and not self.body_consumed:
            self._discard_body()

    def _request_starts(self) -> bool:
        """Wait up to idle_timeout for the first byte of a request; False: close."""
        self.connection.settimeout(self.limits.idle_timeout)
        try:
            return bool(self.rfile.peek(1))  # type: ignore[attr-defined]
        except (TimeoutError, OSError):
            return False

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        declared = self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding")
        self.body_consumed = declared is None
        if self.body_consumed:
            self.request_complete()
        return True

    def request_complete(self) -> None:
        """The whole request is in: no read deadline any more, a write timeout instead."""
        self.server.deadlines.disarm(self.connection)
        self.connection.settimeout(self.limits.write_timeout)

    def content_length(self) -> int:
        """The declared body length; HttpError 400/411 when absent, chunked or invalid."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(411, "chunked request bodies are not accepted; send "
                            "Content-Length", code="length_required")
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.command == "POST" and self.limits.length_required:
                self.close_connection = True
                raise HttpError(411, "a POST needs a Content-Length header",
                                code="length_required")
            return 0
        if not raw.strip().isdigit():
            self.close_connection = True
            raise HttpError(400, f"Content-Length {raw.strip()[:20]!r} is not a number >= 0")
        return int(raw)

    def _discard_body(self) -> None:
        """Drain a small unread body (e.g. after a 401) so the connection stays usable."""
        try:
            length = self.content_length()
        except HttpError:
            length = DISCARD_MAX + 1
        if length > DISCARD_MAX:
            self.close_connection = True
            return
        self.server.deadlines.arm(self.connection, self.limits.header_timeout)
        try:
            self.close_connection = len(self.rfile.read(length)) != length
        except OSError:
            self.close_connection = True
        finally:
            self.server.deadlines.disarm(self.connection)

    # --- replies ----------------------------------------------------------------------------

    def send_json(self, status: int, body: Any) -> None:
        self.send_bytes(status, (json.dumps(body) + "\n").encode(), "application/json")

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection:
            self.send_header("Connection", "close")
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


class Deadlines:
    """Cuts connections whose request is not in by its deadline, and closes refused ones a
    moment after their reply (a lingering close: the client reads the reply before any reset).
    One thread per server."""

    def __init__(self) -> None:
        self._due: dict[socket.socket, float] = {}
        self._closing: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        threading.Thread(target=self._run, name="http-deadlines", daemon=True).start()

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._due[sock] = time.monotonic() + seconds
        self._wake.set()

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._due.pop(sock, None)

    def close_later(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._closing.add(sock)
        self.arm(sock, seconds)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(timeout=self._cut_expired())
            self._wake.clear()

    def _cut_expired(self) -> float:
        """Shut down (or close) expired sockets; seconds until the next deadline (max 1)."""
        now = time.monotonic()
        with self._lock:
            expired = [s for s, due in self._due.items() if due <= now]
            for sock in expired:
                del self._due[sock]
            closing = [s for s in expired if s in self._closing]
            self._closing.difference_update(closing)
            upcoming = min(self._due.values(), default=now + 1.0)
        for sock in expired:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            if sock in closing:
                sock.close()
            else:
                log.info("cut a connection that did not send its request in time")
        return max(0.01, min(1.0, upcoming - now))


BUSY_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s")


class QuietServer(ThreadingHTTPServer):
    """A thread per connection, at most `limits.max_connections` of them; shutdown does not
    wait for open keep-alive connections."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[JsonHandler]) -> None:
        super().__init__(address, handler)
        self.limits = handler.limits
        self.deadlines = Deadlines()
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 from the accepting thread (never blocking it for long) and close."""
        body = json.dumps(HttpError(
            503, f"the server is at its limit of {self.limits.max_connections} connections; "
            "retry shortly", "service_unavailable", code="too_many_connections").body())
        try:
            request.settimeout(0.5)
            request.sendall(BUSY_REPLY % (len(body), body.encode()))
            request.shutdown(socket.SHUT_WR)
        except OSError:
            request.close()
            return
        self.deadlines.close_later(request, 1.0)

    def server_close(self) -> None:
        super().server_close()
        self.deadlines.stop()


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
