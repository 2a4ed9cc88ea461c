"""Every DVC and boto3 call of ggufops: S3 reads and writes with boto3, DVC in a child.

`S3Remote` talks to the S3 side of a DVC remote with boto3. Uploads (`register`) go
straight to DVC's key layout with boto3's multipart transfer manager (dvctrack.py writes
what `dvc add` would, so DVC sees the same repository). Downloads do not use DVC either:
DVC does not verify what it downloads and is several times slower, so `S3Remote` streams
the object into a temp file beside the destination, checking its length first and hashing
sha256 in the same pass, and renames only verified bytes.

DVC itself (`dvc_add`, for tests and tools that want DVC's own behaviour) runs in a child
process (isolated memory, threads and logging; credentials passed on stdin, never on the
command line).

Object keys follow DVC 3's remote layout: `<prefix>/files/md5/<md5[:2]>/<md5[2:]>`.
Nothing here deletes an object from a remote.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ggufops import yamlio
from ggufops.artifacts import s3config
from ggufops.artifacts.s3config import S3Settings
from ggufops.atomic import fsync_path
from ggufops.errors import (
    ArtifactSizeMismatch,
    ChecksumMismatch,
    DvcError,
    GgufopsError,
    ObjectMissing,
    S3AuthError,
    S3ConfigError,
    S3Error,
    S3Unreachable,
    StoreError,
)
from ggufops.hashing import SHA256_HEX
from ggufops.procs import run_python
from ggufops.progress import Progress
from ggufops.registry.dvcpointer import pointer_from_yaml, scan_pointer
from ggufops.registry.registry import VersionRef

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# A default, not a rule: AWS_EC2_METADATA_DISABLED=false (set by the user) enables instance
# profiles; unset, boto would spend seconds probing a metadata service that is not there.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

CHUNK = 1024 * 1024  # measured: 1 MiB reads beat 8 MiB ones here
UPLOAD_PART = 8 * 1024 * 1024  # boto3's default part size and multipart threshold
UPLOAD_THREADS = 10  # boto3's default concurrency
MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_AUTH_CODES = frozenset(
    {"403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken",
     "ExpiredToken", "AuthorizationHeaderMalformed"}
)  # fmt: skip
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def dvc_key(md5: str) -> str:
    """DVC 3 remote key (relative to the remote's prefix) of an object with this md5."""
    if not MD5_HEX.match(md5):
        raise ValueError(f"{md5!r} is not a DVC md5 (32 lower-case hex digits)")
    return f"files/md5/{md5[:2]}/{md5[2:]}"


# --- boto3 -------------------------------------------------------------------------------


def _client(
    endpoint: str | None,
    access_key: str | None,
    secret: str | None,
    *,
    session_token: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    quick: bool = False,
) -> S3Client:
    """A boto3 S3 client; `quick` = one attempt with short timeouts (readiness probes)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 1 if quick else 2, "mode": "standard"},
        connect_timeout=1 if quick else 5,
        read_timeout=2 if quick else 60,
        max_pool_connections=16,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    session = boto3.session.Session(profile_name=profile)
    client: S3Client = session.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        aws_session_token=session_token,
        region_name=region or "us-east-1",
        config=config,
    )
    return client


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def translate(exc: Exception, settings: S3Settings, key: str | None = None,
              label: str | None = None) -> GgufopsError:
    """A botocore/boto3 exception -> one-line GgufopsError naming endpoint, key and fix."""
    from botocore import exceptions as bx

    what = label or (settings.url_of(key) if key else f"s3://{settings.bucket}")
    fix_conf = f"remote {settings.remote!r} in .dvc/config or .dvc/config.local"
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return S3Unreachable(
            f"cannot connect to S3 at {settings.where} (connection refused or unreachable) "
            f"for {what}; start the embedded server with `ggufops s3 serve` or fix the "
            f"endpointurl of {fix_conf}"
        )
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return S3AuthError(
            f"no S3 credentials for {settings.where}; set access_key_id and secret_access_key "
            f"of {fix_conf} (`ggufops s3 serve` writes them) or export AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, bx.ProfileNotFound):
        return S3ConfigError(
            f"AWS profile {settings.profile!r} of {fix_conf} does not exist; create it in "
            f"~/.aws/config or `dvc remote modify --local {settings.remote} --unset profile`"
        )
    code = _error_code(exc)
    if code in _AUTH_CODES:
        return S3AuthError(
            f"S3 at {settings.where} rejected the credentials ({code}) for {what}; check "
            f"access_key_id/secret_access_key of {fix_conf} or AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY"
        )
    if code == "NoSuchBucket":
        return S3ConfigError(
            f"bucket {settings.bucket!r} does not exist on {settings.where}; create it or fix "
            f"the url of {fix_conf}"
        )
    if code in _MISSING_CODES:
        return ObjectMissing(
            f"{what}: object {settings.url_of(key or '')} is missing from {settings.where}; "
            "push it from the clone that registered it (`dvc push -r "
            f"{settings.remote}`) or pick another version"
        )
    detail = code or f"{type(exc).__name__}: {exc}"
    return S3Error(f"S3 request for {what} at {settings.where} failed ({detail}); try again")


@contextlib.contextmanager
def _s3_errors(settings: S3Settings, key: str | None = None,
               label: str | None = None) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as e:
        raise translate(e, settings, key, label) from None


class BucketProbe:
    """Readiness probe for the embedded server: does the bucket answer? create it if not."""

    def __init__(self, endpoint: str, access_key: str, secret: str) -> None:
        self.client = _client(endpoint, access_key, secret, quick=True)

    def ensure_bucket(self, bucket: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
            return True
        except ClientError as e:
            if _error_code(e) in ("404", "NoSuchBucket"):
                with contextlib.suppress(ClientError):
                    self.client.create_bucket(Bucket=bucket)
            return False
        except BotoCoreError:
            return False


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class S3Remote:
    """The S3 side of a DVC remote: HEAD and verified streaming downloads. Never deletes."""

    def __init__(self, settings: S3Settings, client: S3Client | None = None) -> None:
        self.settings = settings
        self._client = client

    @classmethod
    def from_repo(cls, root: Path, remote: str = s3config.DEFAULT_REMOTE) -> S3Remote:
        return cls(s3config.resolve(root, remote))

    @property
    def client(self) -> S3Client:
        if self._client is None:
            s = self.settings
            with _s3_errors(s):  # e.g. an unknown profile
                self._client = _client(
                    s.endpoint_url, s.access_key_id, s.secret_access_key,
                    session_token=s.session_token, region=s.region, profile=s.profile,
                )  # fmt: skip
        return self._client

    def key_for_md5(self, md5: str) -> str:
        return self.settings.key(dvc_key(md5))

    def check_bucket(self) -> None:
        """Raise a clear error unless the bucket answers with these credentials."""
        with _s3_errors(self.settings):
            self.client.head_bucket(Bucket=self.settings.bucket)

    def stat(self, key: str, label: str | None = None) -> ObjectInfo | None:
        """Size of the object at `key`, None if it does not exist."""
        from botocore.exceptions import ClientError

        with _s3_errors(self.settings, key, label):
            try:
                response = self.client.head_object(Bucket=self.settings.bucket, Key=key)
            except ClientError as e:
                if _error_code(e) in _MISSING_CODES:
                    return None
                raise
        return ObjectInfo(key, int(response["ContentLength"]))

    def head(self, key: str) -> bool:
        return self.stat(key) is not None

    def download_verified(
        self,
        key: str,
        sha256: str,
        dest: Path,
        *,
        size: int | None = None,
        tmp_dir: Path | None = None,
        label: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Download `key` to `dest` only if its bytes hash to `sha256` (and have `size`).

        With `size`, the object's length (GetObject's Content-Length) is checked before a
        byte is read or a temp file created, and the stream is cut at `size` bytes, so a
        replaced (larger or shorter) object raises ArtifactSizeMismatch having written at
        most `size` bytes. Bytes go to a temp file in `tmp_dir` (default: dest's directory,
        so the rename is atomic), hashed while they arrive, fsynced, then renamed over
        `dest`. On any error the temp file is removed and `dest` is left as it was.
        """
        if not SHA256_HEX.match(sha256):
            raise ChecksumMismatch(
                f"{label or key}: {sha256!r} is not a sha256; fix the version file"
            )
        what = label or key
        with _s3_errors(self.settings, key, label), self._open_object(key, size, what) as body:
            self._receive(body, key, sha256, dest, size=size, tmp_dir=tmp_dir or dest.parent,
                          what=what, progress=progress)

    @contextlib.contextmanager
    def _open_object(self, key: str, size: int | None, what: str) -> Iterator[Any]:
        """GetObject's body, after checking its Content-Length against `size`."""
        response = self.client.get_object(Bucket=self.settings.bucket, Key=key)
        body = response["Body"]
        try:  # close() drops the connection: the rest of a refused body is never read
            length = response.get("ContentLength")
            if size is not None and length is not None and int(length) != size:
                raise _size_mismatch(what, self.settings.url_of(key), size, int(length),
                                     before=True)
            yield body
        finally:
            body.close()

    def _receive(self, body: Any, key: str, sha256: str, dest: Path, *, size: int | None,
                 tmp_dir: Path, what: str, progress: Progress | None) -> None:
        fd, tmp_name = tempfile.mkstemp(prefix=".pull-", suffix=".part", dir=tmp_dir)
        tmp = Path(tmp_name)
        url = self.settings.url_of(key)
        try:
            with os.fdopen(fd, "wb") as f:
                digest, got = copy_bounded(body, f, size, what=what, url=url,
                                           progress=progress)
                _check_bytes(what, url, sha256=sha256, size=size, digest=digest, got=got)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(dest)
            fsync_path(dest.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def upload(self, path: Path, key: str, *, label: str | None = None,
               progress: Progress | None = None) -> None:
        """Upload the file at `path` to `key`: one PUT below UPLOAD_PART bytes, else a
        multipart upload of UPLOAD_PART parts, UPLOAD_THREADS at a time (boto3's transfer
        manager; a failed or interrupted multipart upload is aborted)."""
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(multipart_threshold=UPLOAD_PART, multipart_chunksize=UPLOAD_PART,
                                max_concurrency=UPLOAD_THREADS)
        with _s3_errors(self.settings, key, label), \
                create_transfer_manager(self.client, config) as manager:
            manager.upload(str(path), self.settings.bucket, key,
                           subscribers=_subscribers(progress)).result()


def _subscribers(progress: Progress | None) -> list[Any] | None:
    """s3transfer subscribers forwarding byte counts (negative when a part is retried)."""
    if progress is None:
        return None
    from s3transfer.subscribers import BaseSubscriber

    class Forward(BaseSubscriber):
        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            assert progress is not None
            progress(bytes_transferred)

    return [Forward()]


def copy_bounded(body: Any, f: IO[bytes], size: int | None, *, what: str, url: str,
                 progress: Progress | None = None) -> tuple[str, int]:
    """Copy `body` (anything with read(n)) to `f`, hashing sha256; with `size`, never read
    or write past it: one more byte raises ArtifactSizeMismatch. Returns (sha256, bytes)."""
    hasher = hashlib.sha256()
    total = 0
    while chunk := body.read(CHUNK if size is None else min(CHUNK, size - total) or 1):
        if size is not None and total + len(chunk) > size:
            raise _size_mismatch(what, url, size, None, before=False)
        hasher.update(chunk)
        _write(f, chunk, what)
        total += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return hasher.hexdigest(), total


def _write(f: IO[bytes], chunk: bytes, what: str) -> None:
    try:
        f.write(chunk)
    except OSError as e:
        raise StoreError(
            f"writing {what} to {f.name} failed: {e.strerror or e}; free disk space "
            "(or raise the file size limit) and pull again"
        ) from None


def _size_mismatch(what: str, url: str, expected: int, actual: int | None, *,
                   before: bool) -> ArtifactSizeMismatch:
    found = f"{actual} bytes" if actual is not None else f"more than {expected} bytes"
    when = "before downloading it" if before else "at the first byte past that size"
    return ArtifactSizeMismatch(
        f"{what}: {url} is {found}, the version file says {expected}; the object in S3 was "
        f"replaced or truncated: refused {when} (nothing was stored); put the artifact's "
        "bytes back at that key from a clone that has the file, or deploy another version"
    )


def _check_bytes(what: str, url: str, *, sha256: str, size: int | None, digest: str,
                 got: int) -> None:
    if size is not None and got != size:
        raise _size_mismatch(what, url, size, got, before=False)
    if digest != sha256:
        raise ChecksumMismatch(
            f"{what}: sha256 of {url} is {digest}, the registry says {sha256}; the object in "
            "S3 was replaced or damaged: refusing it (nothing was stored)"
        )


def missing_objects(
    root: Path, version_docs: Mapping[VersionRef, Mapping[str, Any]]
) -> list[tuple[VersionRef, str]]:
    """(ref, s3 URL) of every version whose object is not in the remote (HEAD only)."""
    if not version_docs:
        return []
    remote = S3Remote.from_repo(root)
    remote.check_bucket()
    keys = {ref: remote.key_for_md5(doc["artifact"]["dvc_md5"])
            for ref, doc in version_docs.items()}
    with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
        present = dict(zip(keys, pool.map(remote.head, keys.values()), strict=True))
    return [(ref, remote.settings.url_of(keys[ref])) for ref in sorted(keys) if not present[ref]]


# --- DVC ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DvcOut:
    """What a .dvc pointer file records about its one output."""

    pointer: Path
    md5: str
    size: int
    path: str


_DVC_SCRIPT = """
import json, sys
req = json.load(sys.stdin)
from dvc.exceptions import DvcException
from dvc.repo import Repo
step = "open"
try:
    repo = Repo(req["root"], remote=req.get("remote"), remote_config=req.get("remote_config"))
    with repo:
        if req.get("add"):
            step = "add"
            repo.add(req["add"])
        if req.get("push"):
            step = "push"
            repo.push(targets=req["push"], remote=req["remote"], jobs=1)
except DvcException as e:
    causes = [str(e)] + [str(c) for c in (e.__cause__, e.__context__) if c]
    print(step + ": " + "; ".join(c for c in causes if c), file=sys.stderr)
    sys.exit(1)
"""


def dvc_child_env() -> dict[str, str]:
    """The DVC child's environment: EC2 instance metadata off unless the user set it
    (AWS_EC2_METADATA_DISABLED=false lets boto use an instance profile), no analytics."""
    return {"AWS_EC2_METADATA_DISABLED": "true", **os.environ, "DVC_NO_ANALYTICS": "1"}


def _run_dvc(root: Path, request: dict[str, Any]) -> None:
    """One DVC child process (one import, one Repo) for the steps in `request`."""
    child = run_python(["-c", _DVC_SCRIPT], request={"root": str(root), **request}, cwd=root,
                       env=dvc_child_env())
    if child.returncode != 0:
        message = child.last_error_line() or f"exit status {child.returncode}"
        targets = " ".join(request.get("add") or request.get("push") or [])
        raise DvcError(f"dvc {message} (for {targets}); fix that and run the command again")


def _rel(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _remote_config(settings: S3Settings) -> dict[str, str]:
    """Our resolved endpoint and credentials, so DVC pushes where we read."""
    values = {
        "endpointurl": settings.endpoint_url,
        "access_key_id": settings.access_key_id,
        "secret_access_key": settings.secret_access_key,
        "session_token": settings.session_token,
    }
    return {k: v for k, v in values.items() if v}


def _push_request(settings: S3Settings, pointer: str) -> dict[str, Any]:
    return {"push": [pointer], "remote": settings.remote,
            "remote_config": _remote_config(settings)}


def dvc_add(root: Path, path: Path, push_to: S3Settings | None = None) -> DvcOut:
    """`dvc add` one file (writes `<path>.dvc` and the .gitignore entry), then, with
    `push_to`, `dvc push -r <remote> -j 1` it using the endpoint and credentials we resolved.
    Both run in one DVC process."""
    pointer = path.with_name(path.name + ".dvc")
    request: dict[str, Any] = {"add": [_rel(root, path)]}
    if push_to is not None:
        request.update(_push_request(push_to, _rel(root, pointer)))
    _run_dvc(root, request)
    return read_pointer(pointer)


def read_pointer(pointer: Path) -> DvcOut:
    """A pointer's one output, strictly: every field present, the md5 an md5."""
    facts = scan_pointer(pointer.read_text(errors="replace"))
    if facts is None or facts.path is None:
        facts = pointer_from_yaml(yamlio.load(pointer))
    if None in (facts.md5, facts.size, facts.path):
        raise DvcError(f"{pointer}: not a DVC pointer with outs[0].md5/size/path")
    try:
        md5, size, path = str(facts.md5), int(facts.size), str(facts.path)
    except (TypeError, ValueError):
        raise DvcError(f"{pointer}: not a DVC pointer with outs[0].md5/size/path") from None
    if not MD5_HEX.match(md5):
        raise DvcError(f"{pointer}: outs[0].md5 {md5!r} is not an md5")
    return DvcOut(pointer, md5, size, path)
