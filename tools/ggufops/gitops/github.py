"""The few GitHub REST calls ggufops makes: open a pull request, keep one PR comment.

Settings come from the environment GitHub Actions sets (and a person can set locally):
GITHUB_TOKEN, GITHUB_REPOSITORY (owner/name; else parsed from the git remote URL),
GITHUB_API_URL (default https://api.github.com), GITHUB_SERVER_URL (default
https://github.com), GITHUB_EVENT_PATH (the event JSON, for the pull request number).
Only the standard library's urllib is used; tests point GITHUB_API_URL at a local fake.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ggufops.errors import GitHubAuthError, GitHubError, UsageError

DEFAULT_API = "https://api.github.com"
DEFAULT_SERVER = "https://github.com"
MAX_COMMENT = 65536  # GitHub refuses longer comment bodies
_REMOTE = re.compile(r"^(?:[a-z+]+://)?(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?[:/]"
                     r"(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?)(?:\.git)?/?$")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_MARKER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PR_REF = re.compile(r"^refs/pull/(\d+)/")


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    existing: bool = False  # it was already open; nothing new was created

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comment:
    id: int
    url: str
    created: bool  # False: an existing comment with the marker was updated

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- settings ---------------------------------------------------------------------------

def token(environ: Mapping[str, str]) -> str | None:
    return environ.get("GITHUB_TOKEN") or environ.get("GH_TOKEN") or None


def repository(environ: Mapping[str, str], remote_url: str | None) -> str | None:
    """owner/name: GITHUB_REPOSITORY, else the GitHub remote's URL; None if unknown."""
    named = environ.get("GITHUB_REPOSITORY", "").strip()
    if named:
        if not _REPO.match(named):
            raise UsageError(f"GITHUB_REPOSITORY={named!r} is not owner/name; fix it")
        return named
    if not remote_url:
        return None
    server = urllib.parse.urlparse(environ.get("GITHUB_SERVER_URL") or DEFAULT_SERVER)
    return parse_remote(remote_url, server.hostname or "github.com")


def parse_remote(url: str, host: str = "github.com") -> str | None:
    """owner/name of a git remote URL on `host` (https, ssh or scp-like); None otherwise."""
    match = _REMOTE.match(url.strip())
    if not match or match.group("host").lower() != host.lower():
        return None
    return match.group("repo")


def compare_url(environ: Mapping[str, str], repo: str, base: str, head: str) -> str:
    server = (environ.get("GITHUB_SERVER_URL") or DEFAULT_SERVER).rstrip("/")
    return (f"{server}/{repo}/compare/{urllib.parse.quote(base)}..."
            f"{urllib.parse.quote(head)}?expand=1")


def pr_number_from_env(environ: Mapping[str, str]) -> int | None:
    """The pull request a workflow runs for: the event JSON, else GITHUB_REF."""
    event_path = environ.get("GITHUB_EVENT_PATH")
    if event_path and Path(event_path).is_file():
        try:
            event = json.loads(Path(event_path).read_text())
        except (OSError, ValueError):
            event = {}
        number = (event.get("pull_request") or {}).get("number") or event.get("number")
        if isinstance(number, int):
            return number
    match = _PR_REF.match(environ.get("GITHUB_REF", ""))
    return int(match.group(1)) if match else None


def marker_line(marker: str) -> str:
    if not _MARKER.match(marker):
        raise UsageError(f"marker {marker!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return f"<!-- {marker} -->"


# --- client -----------------------------------------------------------------------------

class Client:
    """GitHub's REST API for one repository."""

    def __init__(self, api_url: str, repo: str, token: str, timeout: float = 30) -> None:
        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self._token = token
        self.timeout = timeout

    @classmethod
    def from_env(cls, environ: Mapping[str, str], repo: str, token: str) -> Client:
        return cls(environ.get("GITHUB_API_URL") or DEFAULT_API, repo, token)

    def create_pull(self, *, head: str, base: str, title: str, body: str) -> PullRequest:
        """Open a pull request; an already open one for `head` is returned instead."""
        path = f"/repos/{self.repo}/pulls"
        status, data = self._call("POST", path, {"title": title, "head": head, "base": base,
                                                 "body": body}, ok_statuses=(422,))
        if status == 422:
            if "already exists" in _messages(data).lower():
                existing = self.find_open_pull(head)
                if existing is not None:
                    return existing
            raise GitHubError(f"GitHub refused the pull request {head} -> {base} "
                              f"(422: {_messages(data)}) at POST {self.api_url}{path}; "
                              "check that both branches exist on GitHub")
        return PullRequest(int(data["number"]), str(data.get("html_url", "")))

    def find_open_pull(self, head: str) -> PullRequest | None:
        owner = self.repo.split("/")[0]
        _, data = self._call("GET", f"/repos/{self.repo}/pulls",
                             query={"head": f"{owner}:{head}", "state": "open"})
        for pull in data if isinstance(data, list) else []:
            return PullRequest(int(pull["number"]), str(pull.get("html_url", "")), True)
        return None

    def upsert_comment(self, number: int, body: str, marker: str) -> Comment:
        """Create the PR comment carrying `marker`, or update it if it exists."""
        tag = marker_line(marker)
        text = _fit(f"{tag}\n{body}")
        for comment in self._comments(number):
            if tag in str(comment.get("body", "")):
                _, data = self._call("PATCH", f"/repos/{self.repo}/issues/comments/"
                                     f"{comment['id']}", {"body": text})
                return Comment(int(data["id"]), str(data.get("html_url", "")), False)
        _, data = self._call("POST", f"/repos/{self.repo}/issues/{number}/comments",
                             {"body": text})
        return Comment(int(data["id"]), str(data.get("html_url", "")), True)

    def create_status(self, sha: str, *, state: str, context: str, description: str,
                      target_url: str | None = None) -> None:
        """A commit status on `sha` (state: error, failure, pending or success)."""
        body = {"state": state, "context": context, "description": description[:140]}
        if target_url:
            body["target_url"] = target_url
        self._call("POST", f"/repos/{self.repo}/statuses/{sha}", body)

    def _comments(self, number: int) -> list[dict[str, Any]]:
        comments: list[dict[str, Any]] = []
        for page in range(1, 100):
            _, data = self._call("GET", f"/repos/{self.repo}/issues/{number}/comments",
                                 query={"per_page": "100", "page": str(page)})
            batch = data if isinstance(data, list) else []
            comments.extend(batch)
            if len(batch) < 100:
                break
        return comments

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
              query: dict[str, str] | None = None,
              ok_statuses: tuple[int, ...] = ()) -> tuple[int, Any]:
        url = self.api_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(url, method=method, headers={  # noqa: S310
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {self._token}",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "ggufops",
            "Content-Type": "application/json",
        }, data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.status, _json(response.read())
        except urllib.error.HTTPError as e:
            data = _json(e.read())
            if e.code in ok_statuses:
                return e.code, data
            raise _http_error(e.code, method, url, data) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise GitHubError(f"cannot reach the GitHub API at {url} ({reason}); check "
                              "GITHUB_API_URL and the network") from None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {"message": raw[:200].decode(errors="replace")}


def _messages(data: Any) -> str:
    if not isinstance(data, dict):
        return str(data)
    parts = [str(data.get("message", ""))]
    for error in data.get("errors") or []:
        parts.append(str(error.get("message", error)) if isinstance(error, dict) else str(error))
    return "; ".join(p for p in parts if p)


def _http_error(status: int, method: str, url: str, data: Any) -> GitHubError:
    said = _messages(data) or "no message"
    where = f"{method} {url}"
    if status == 401:
        return GitHubAuthError(f"GitHub rejected the token (401: {said}) at {where}; set "
                               "GITHUB_TOKEN to a valid token")
    if status == 403:
        return GitHubAuthError(f"GitHub refused the request (403: {said}) at {where}; the "
                               "token needs `pull-requests: write` (or wait out a rate limit)")
    if status == 404:
        return GitHubError(f"not found (404: {said}) at {where}; check GITHUB_REPOSITORY and "
                           "that the token can see the repository")
    return GitHubError(f"GitHub answered {status} ({said}) at {where}")


def _fit(text: str) -> str:
    if len(text) <= MAX_COMMENT:
        return text
    note = "\n\n… (truncated: the full report is in the job summary)\n"
    return text[: MAX_COMMENT - len(note)] + note
