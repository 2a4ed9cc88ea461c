"""A real git remote over smart HTTP with basic auth: `git http-backend` (CGI) behind a small
http.server on 127.0.0.1. Its URL carries credentials (`http://user:TOKEN@127.0.0.1:port/
remote.git`), as an agent's --repo does when a token is put in the URL: what the secrets
tests plant and then look for everywhere."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

USER = "deploy-bot"
TOKEN = "glpat-PLANTED-git-token-5f3a9c"  # noqa: S105 - the secret the tests look for


class GitHttpServer:
    """Serves the bare repositories under `root`; only `user:token` may read them."""

    def __init__(self, root: Path, user: str = USER, token: str = TOKEN) -> None:
        self.root = root
        self.user, self.token = user, token
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, repo: Path) -> str:
        """The repository's URL, credentials included."""
        return f"http://{self.user}:{self.token}@127.0.0.1:{self.port}/{repo.name}"

    def start(self) -> GitHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        return header == f"Basic {expected}"

    def cgi(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str],
                                                                        bytes]:
        """Run `git http-backend` for one request; (status, headers, body)."""
        parts = urlsplit(handler.path)
        env = {**os.environ, "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": parts.path, "QUERY_STRING": parts.query,
               "REQUEST_METHOD": handler.command, "REMOTE_USER": self.user,
               "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(body)),
               "CONTENT_TYPE": handler.headers.get("Content-Type", "")}
        for name in ("Git-Protocol", "Content-Encoding"):
            if handler.headers.get(name):
                env["HTTP_" + name.upper().replace("-", "_")] = handler.headers[name]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True, check=False).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        status = int(headers.pop("Status", "200").split()[0])
        return status, headers, payload


def _handler(server: GitHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            server.requests += 1
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if not server.authorized(self.headers.get("Authorization")):
                self._reply(401, {"WWW-Authenticate": 'Basic realm="git"'}, b"no\n")
                return
            self._reply(*server.cgi(self, body))

        def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def git_http(root: Path) -> Iterator[GitHttpServer]:
    server = GitHttpServer(root).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def git_http_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    """Serves tmp_path's bare repositories (the `world`'s remote.git among them)."""
    with git_http(tmp_path) as server:
        yield server
