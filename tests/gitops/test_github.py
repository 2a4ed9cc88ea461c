"""GitHub REST client and `ggufops pr-comment`, against the local fake of GitHub's API."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ggufops.errors import GitHubAuthError, GitHubError, UsageError
from ggufops.gitops import github
from testing.fakegithub import FakeGitHub
from testing.scratch import cli


@pytest.mark.parametrize(("url", "repo"), [
    ("https://github.com/acme/models.git", "acme/models"),
    ("https://github.com/acme/models", "acme/models"),
    ("https://x-access-token:abc@github.com/acme/models.git", "acme/models"),
    ("git@github.com:acme/models.git", "acme/models"),
    ("ssh://git@github.com/acme/my.models.git", "acme/my.models"),
    ("ssh://git@github.com:22/acme/models", "acme/models"),
    ("https://gitlab.com/acme/models.git", None),
    ("/srv/git/models.git", None),
])
def test_parse_remote(url: str, repo: str | None) -> None:
    assert github.parse_remote(url) == repo


def test_repository_prefers_github_repository_then_the_remote() -> None:
    assert github.repository({"GITHUB_REPOSITORY": "o/r"}, "git@github.com:x/y.git") == "o/r"
    assert github.repository({}, "git@github.com:x/y.git") == "x/y"
    assert github.repository({"GITHUB_SERVER_URL": "https://ghe.corp"},
                             "https://ghe.corp/x/y.git") == "x/y"
    assert github.repository({}, None) is None
    with pytest.raises(UsageError, match="not owner/name"):
        github.repository({"GITHUB_REPOSITORY": "just-a-name"}, None)


def test_compare_url_and_pr_number_from_the_event(tmp_path: Path) -> None:
    assert github.compare_url({}, "o/r", "main", "deploy/prod/m-1.0.0") == \
        "https://github.com/o/r/compare/main...deploy/prod/m-1.0.0?expand=1"
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 42}}))
    assert github.pr_number_from_env({"GITHUB_EVENT_PATH": str(event)}) == 42
    assert github.pr_number_from_env({"GITHUB_REF": "refs/pull/9/merge"}) == 9
    assert github.pr_number_from_env({}) is None


def client(fake: FakeGitHub, token: str | None = None) -> github.Client:
    return github.Client(fake.url, fake.repo, token or fake.token)


def test_create_pull_then_422_returns_the_open_one(fake_github: FakeGitHub) -> None:
    first = client(fake_github).create_pull(head="deploy/x", base="main", title="t", body="b")
    assert first == github.PullRequest(1, "https://github.test/acme/models/pull/1", False)
    again = client(fake_github).create_pull(head="deploy/x", base="main", title="t", body="b")
    assert again == github.PullRequest(1, "https://github.test/acme/models/pull/1", True)
    assert len(fake_github.pulls) == 1
    sent = fake_github.requests[0][2]
    assert sent == {"title": "t", "head": "deploy/x", "base": "main", "body": "b"}


def test_401_is_an_auth_error_naming_the_url(fake_github: FakeGitHub) -> None:
    with pytest.raises(GitHubAuthError) as info:
        client(fake_github, "bad").create_pull(head="h", base="main", title="t", body="")
    assert str(info.value) == (
        f"GitHub rejected the token (401: Bad credentials) at POST {fake_github.url}/repos/"
        "acme/models/pulls; set GITHUB_TOKEN to a valid token")


def test_404_names_the_repository_setting(fake_github: FakeGitHub) -> None:
    wrong = github.Client(fake_github.url, "acme/other", fake_github.token)
    with pytest.raises(GitHubError, match="check GITHUB_REPOSITORY"):
        wrong.upsert_comment(1, "x", "m")


def test_unreachable_api_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = github.Client(f"http://127.0.0.1:{port}", "o/r", "t", timeout=5)
    with pytest.raises(GitHubError, match=r"cannot reach the GitHub API at http://127\.0\.0\.1"):
        dead.create_pull(head="h", base="main", title="t", body="")


def test_upsert_comment_creates_once_then_updates(fake_github: FakeGitHub) -> None:
    first = client(fake_github).upsert_comment(3, "report v1", "ggufops-gate")
    second = client(fake_github).upsert_comment(3, "report v2", "ggufops-gate")
    other = client(fake_github).upsert_comment(3, "other", "something-else")
    assert first.created and not second.created and other.created
    assert first.id == second.id != other.id
    assert fake_github.comments[first.id]["body"] == "<!-- ggufops-gate -->\nreport v2"
    assert len(fake_github.comments) == 2


def test_upsert_comment_pages_through_many_comments(fake_github: FakeGitHub) -> None:
    for i in range(150):
        fake_github.comments[i] = {"id": i, "issue": 5, "body": f"chatter {i}", "html_url": ""}
    fake_github.comments[500] = {"id": 500, "issue": 5, "body": "<!-- ggufops-gate -->\nold",
                                 "html_url": ""}
    comment = client(fake_github).upsert_comment(5, "new", "ggufops-gate")
    assert comment.id == 500 and not comment.created
    assert fake_github.comments[500]["body"] == "<!-- ggufops-gate -->\nnew"


def test_long_comments_are_truncated_to_what_github_accepts(fake_github: FakeGitHub) -> None:
    comment = client(fake_github).upsert_comment(1, "x" * 70000, "ggufops-gate")
    body = fake_github.comments[comment.id]["body"]
    assert len(body) == github.MAX_COMMENT
    assert body.endswith("(truncated: the full report is in the job summary)\n")


def test_bad_marker_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="marker"):
        github.marker_line("--> <script>")


def test_pr_comment_command(
        fake_github: FakeGitHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = tmp_path / "gate-report.md"
    report.write_text("## Gate\n\nall good\n")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 12}}))
    monkeypatch.setenv("GITHUB_EVENT_PATH", str(event))

    created = cli(tmp_path, "pr-comment", "--file", str(report), "--marker", "ggufops-gate")
    report.write_text("## Gate\n\nrerun\n")
    updated = cli(tmp_path, "pr-comment", "--file", str(report), "--marker", "ggufops-gate",
                  "--json")

    assert created.exit_code == 0, created.stderr
    assert created.output.startswith("created comment 1000 on acme/models#12: ")
    assert updated.exit_code == 0, updated.stderr
    assert json.loads(updated.output) == {"pr": 12, "id": 1000,
                                          "url": "https://github.test/c/1000", "created": False}
    assert fake_github.comments == {1000: {"id": 1000, "issue": 12,
                                           "body": "<!-- ggufops-gate -->\n## Gate\n\nrerun\n",
                                           "html_url": "https://github.test/c/1000"}}


def test_pr_comment_without_a_pull_request_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_EVENT_PATH", raising=False)
    monkeypatch.delenv("GITHUB_REF", raising=False)
    report = tmp_path / "r.md"
    report.write_text("x")
    result = cli(tmp_path, "pr-comment", "--file", str(report), "--marker", "m")
    assert result.exit_code == 2
    assert "no pull request number: pass --pr N" in result.stderr
