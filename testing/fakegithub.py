"""A fake GitHub REST API: the one thing no test can reach for real.

`FakeGitHub` is a small http.server on 127.0.0.1 that answers the few endpoints ggufops
calls, with GitHub's own status codes and messages (401 Bad credentials, 422 "A pull
request already exists").
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

REPO = "acme/models"
TOKEN = "ghp_test_token"  # noqa: S105 - the fake accepts only this


@dataclass
class FakeGitHub:
    """State of the fake: what was created, and every request it saw."""

    url: str = ""
    token: str = TOKEN
    repo: str = REPO
    pulls: list[dict[str, Any]] = field(default_factory=list)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)  # commit statuses, in order
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, path: str, query: dict[str, str], auth: str,
               body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path, body))
            if auth != f"Bearer {self.token}":
                return 401, {"message": "Bad credentials",
                             "documentation_url": "https://docs.github.com/rest"}
            prefix = f"/repos/{self.repo}/"
            if not path.startswith(prefix):
                return 404, {"message": "Not Found"}
            return self._route(method, path[len(prefix):], query, body)

    def _route(self, method: str, rest: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        if rest == "pulls" and method == "POST":
            return self._create_pull(body)
        if rest == "pulls" and method == "GET":
            owner_head = query.get("head", "")
            found = [p for p in self.pulls if f"{self.repo.split('/')[0]}:{p['head']['ref']}"
                     == owner_head and p["state"] == query.get("state", "open")]
            return 200, found
        match = re.fullmatch(r"statuses/([0-9a-f]{40})", rest)
        if match and method == "POST":
            if body.get("state") not in ("error", "failure", "pending", "success"):
                return 422, {"message": "Validation Failed"}
            self.statuses.append({"sha": match.group(1), **body})
            return 201, {"id": len(self.statuses), **body}
        match = re.fullmatch(r"issues/(\d+)/comments", rest)
        if match and method == "GET":
            issue = int(match.group(1))
            mine = [c for c in self.comments.values() if c["issue"] == issue]
            per_page, page = int(query.get("per_page", 30)), int(query.get("page", 1))
            return 200, mine[(page - 1) * per_page: page * per_page]
        if match and method == "POST":
            new_id = 1000 + len(self.comments)
            self.comments[new_id] = {"id": new_id, "issue": int(match.group(1)),
                                     "body": body["body"],
                                     "html_url": f"https://github.test/c/{new_id}"}
            return 201, self.comments[new_id]
        match = re.fullmatch(r"issues/comments/(\d+)", rest)
        if match and method == "PATCH" and int(match.group(1)) in self.comments:
            comment = self.comments[int(match.group(1))]
            comment["body"] = body["body"]
            return 200, comment
        return 404, {"message": "Not Found"}

    def _create_pull(self, body: dict[str, Any]) -> tuple[int, Any]:
        if any(p["head"]["ref"] == body["head"] and p["state"] == "open" for p in self.pulls):
            owner = self.repo.split("/")[0]
            return 422, {"message": "Validation Failed", "errors": [{
                "resource": "PullRequest", "code": "custom",
                "message": f"A pull request already exists for {owner}:{body['head']}."}]}
        number = len(self.pulls) + 1
        pull = {"number": number, "state": "open", "title": body["title"],
                "body": body.get("body", ""), "head": {"ref": body["head"]},
                "base": {"ref": body["base"]},
                "html_url": f"https://github.test/{self.repo}/pull/{number}"}
        self.pulls.append(pull)
        return 201, pull


def _handler(state: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, data = state.handle(self.command, url.path, query,
                                        self.headers.get("Authorization", ""), body)
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake_github(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    """A fake GitHub API on 127.0.0.1; GITHUB_API_URL/TOKEN/REPOSITORY point at it."""
    state = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GITHUB_API_URL", state.url)
    monkeypatch.setenv("GITHUB_TOKEN", state.token)
    monkeypatch.setenv("GITHUB_REPOSITORY", state.repo)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
