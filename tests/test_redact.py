"""One redaction function for credentials in URLs, and git errors that name the real cause."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ggufops import git
from ggufops.errors import GitError
from ggufops.redact import RedactingFormatter, redact, redact_data


@pytest.mark.parametrize(("text", "shown"), [
    ("http://user:TOKEN@host/repo.git", "http://user:***@host/repo.git"),
    ("https://x-access-token:ghs_abc123@github.com/o/r.git",
     "https://x-access-token:***@github.com/o/r.git"),
    ("https://ghp_abc123@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("fatal: unable to access 'https://oauth2:glpat-xyz@gitlab.example/r.git/': 403",
     "fatal: unable to access 'https://oauth2:***@gitlab.example/r.git/': 403"),
    ("ssh://git@host/repo.git", "ssh://git@host/repo.git"),
    ("ssh://git:pw@host/repo.git", "ssh://git:***@host/repo.git"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),
    ("/srv/git/registry.git", "/srv/git/registry.git"),
    ("http://host/path?q=a@b", "http://host/path?q=a@b"),
    ("mail me at ops@example.com", "mail me at ops@example.com"),
    ("two: http://a:b@h1/x and https://c:d@h2/y", "two: http://a:***@h1/x and https://c:***@h2/y"),
])
def test_redact_hides_url_credentials(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_redact_data_walks_json_like_values() -> None:
    data = {"remote": {"url": "http://u:p@h/r.git", "ok": True, "n": 3},
            "errors": ["http://u:p@h/r.git is unreachable", None]}
    assert redact_data(data) == {"remote": {"url": "http://u:***@h/r.git", "ok": True, "n": 3},
                                 "errors": ["http://u:***@h/r.git is unreachable", None]}


def test_log_lines_are_redacted_with_their_tracebacks() -> None:
    formatter = RedactingFormatter("%(message)s")
    try:
        raise ValueError("cannot reach http://bot:SECRET1@h/r.git")
    except ValueError:
        import sys

        record = logging.LogRecord("ggufops.agent", logging.ERROR, __file__, 1,
                                   "fetch of %s failed", ("http://bot:SECRET2@h/r.git",),
                                   sys.exc_info())
    line = formatter.format(record)
    assert "SECRET" not in line
    assert "fetch of http://bot:***@h/r.git failed" in line
    assert "ValueError: cannot reach http://bot:***@h/r.git" in line


def test_an_unreachable_remote_is_reported_with_the_real_cause(tmp_path: Path) -> None:
    missing = tmp_path / "missing.git"
    with pytest.raises(GitError) as info:
        git.ls_remote(str(missing), "main")
    message = str(info.value)
    assert message == (f"git remote {missing} is unreachable: '{missing}' does not appear to "
                       "be a git repository")
    assert "repository exists" not in message


def test_git_errors_never_show_url_credentials(tmp_path: Path) -> None:
    url = "http://bot:PLANTED-TOKEN@127.0.0.1:9/registry.git"  # port 9: nothing listens
    with pytest.raises(GitError) as info:
        git.ls_remote(url, "main", timeout=20)
    message = str(info.value)
    assert "PLANTED-TOKEN" not in message
    assert message.startswith("git remote http://bot:***@127.0.0.1:9/registry.git is "
                              "unreachable: ")
    mirror = tmp_path / "mirror.git"
    with pytest.raises(GitError) as info:
        git.mirror_fetch(mirror, url, "main", timeout=20)
    assert "PLANTED-TOKEN" not in str(info.value)


@pytest.mark.parametrize(("stderr", "cause"), [
    (b"ssh: connect to host h port 22: Connection refused\r\nfatal: Could not read from "
     b"remote repository.\n\nPlease make sure you have the correct access rights\nand the "
     b"repository exists.\n", "ssh: connect to host h port 22: Connection refused"),
    (b"fatal: unable to access 'http://h/r.git/': Could not resolve host: h\n",
     "unable to access 'http://h/r.git/': Could not resolve host: h"),
    (b"hint: something\nerror: pathspec 'x' did not match\n", "pathspec 'x' did not match"),
    (b"", "exit status 128"),
])
def test_cause_is_the_first_line_that_says_something(stderr: bytes, cause: str) -> None:
    assert git.cause(stderr, 128) == cause
