"""The branch head as a small object in S3, for large fleets (docs/scale.md).

`ggufops publish-head --env ENV` (CI, after every merge) writes
`s3://<bucket>/<prefix>/fleet/<env>/HEAD`, a few bytes of JSON naming the branch's commit,
into the registry's own DVC remote. `ggufops agent --watch s3://...` then polls that object
with a conditional GET (`If-None-Match: <ETag>`): an unchanged pointer costs one 304 from
S3 and nothing on the git host, which is asked only when the commit changes (the fetch).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops.artifacts.dvc import S3Remote, _client
from ggufops.errors import PointerError

NAME = "HEAD"


@dataclass(frozen=True)
class PointerUrl:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> PointerUrl:
        scheme, _, rest = url.partition("://")
        bucket, _, key = rest.partition("/")
        if scheme != "s3" or not bucket or not key:
            raise PointerError(f"--watch {url!r} is neither `git` nor an s3://BUCKET/KEY URL "
                               "of a head pointer (`ggufops publish-head` prints it)")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def pointer_key(prefix: str, env: str) -> str:
    rel = f"fleet/{env}/{NAME}"
    return f"{prefix}/{rel}" if prefix else rel


def render(commit: str, branch: str, env: str) -> bytes:
    return json.dumps({"commit": commit, "branch": branch, "environment": env,
                       "published_at": time.time()}, sort_keys=True).encode()


def parse(raw: bytes, where: str) -> str:
    """The commit a pointer names; PointerError if it is not a pointer."""
    try:
        commit = json.loads(raw)["commit"]
    except (ValueError, KeyError, TypeError):
        commit = None
    if not isinstance(commit, str) or len(commit) != 40 or \
            any(c not in "0123456789abcdef" for c in commit):
        raise PointerError(f"{where} is not a head pointer (JSON with a 40-hex `commit`); "
                           "write it with `ggufops publish-head`")
    return commit


def publish(root: Path, env: str, commit: str, branch: str) -> PointerUrl:
    """Write the pointer into the registry's DVC remote (one PUT, atomic in S3)."""
    remote = S3Remote.from_repo(root)
    url = PointerUrl(remote.settings.bucket, pointer_key(remote.settings.prefix, env))
    try:
        remote.client.put_object(Bucket=url.bucket, Key=url.key, Body=render(commit, branch, env),
                                 ContentType="application/json")
    except Exception as e:  # botocore's errors: one line naming the object
        raise PointerError(f"cannot write {url} ({remote.settings.where}): {e}") from None
    return url


class PointerWatch:
    """Polls one pointer with conditional GETs; `head()` is its commit."""

    def __init__(self, url: str, endpoint: str | None) -> None:
        self.url = PointerUrl.parse(url)
        self.client: Any = _client(endpoint, None, None)  # credentials: AWS_* environment
        self.etag: str | None = None
        self.commit: str | None = None
        self.not_modified = 0  # 304 answers, for tests and metrics

    def head(self) -> str:
        args = {"Bucket": self.url.bucket, "Key": self.url.key}
        if self.etag is not None and self.commit is not None:
            args["IfNoneMatch"] = self.etag
        try:
            reply = self.client.get_object(**args)
        except Exception as e:
            return self._unchanged_or_raise(e)
        self.commit = parse(reply["Body"].read(1024), str(self.url))
        self.etag = reply.get("ETag")
        return self.commit

    def _unchanged_or_raise(self, error: Exception) -> str:
        code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("304", "NotModified") and self.commit is not None:
            self.not_modified += 1
            return self.commit
        if code in ("NoSuchKey", "404"):
            raise PointerError(f"no head pointer at {self.url}; CI writes it with `ggufops "
                               "publish-head --env ENV` after each merge") from None
        raise PointerError(f"head pointer {self.url} is unreachable: {error}") from None
