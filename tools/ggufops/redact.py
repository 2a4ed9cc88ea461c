"""Credentials never leave the process in clear: the one redaction function.

A git URL may carry credentials (`https://user:TOKEN@host/repo.git`, or a token alone as
the user, as GitHub and GitLab accept: `https://TOKEN@host/repo.git`). Every text that
could show or store such a URL (log records, /status, /metrics, the apply log, error
messages, `agent status`) goes through `redact`, which replaces the password, or a user
name that may be a token, with `***`. A plain ssh user (`ssh://git@host/...`, or the scp
form `git@host:repo.git`) names no secret and is kept.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"

# scheme://userinfo@ ; userinfo stops at the first character a URL cannot hold there
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"<>]+)@")
_SSH_SCHEMES = ("ssh://", "git+ssh://", "ssh+git://")


def _mask(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    user, colon, _password = userinfo.partition(":")
    if colon:
        return f"{scheme}{user}:{MASK}@"
    if scheme.lower() in _SSH_SCHEMES:
        return match.group(0)
    return f"{scheme}{MASK}@"


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***`."""
    return _USERINFO.sub(_mask, text) if "@" in text else text


def redact_data(value: Any) -> Any:
    """`redact` applied to every string inside JSON-like data (dicts, lists, strings)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line (message, arguments, traceback) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
