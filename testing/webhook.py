"""A local webhook receiver for tests: records each POST, checks its HMAC signature."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ggufops.notify import SIGNATURE_HEADER, verify


@dataclass
class Received:
    body: bytes
    signature: str | None
    signed_ok: bool


@dataclass
class Receiver:
    url: str
    secret: bytes
    received: list[Received] = field(default_factory=list)


@contextlib.contextmanager
def webhook_receiver(secret: bytes) -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 answering 204 to every POST it records."""
    receiver = Receiver("", secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            header = self.headers.get(SIGNATURE_HEADER)
            receiver.received.append(Received(body, header, verify(secret, body, header)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
