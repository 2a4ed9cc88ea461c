"""Small S3 objects over plain HTTP, signed with AWS Signature Version 4: put, get, list.

The sync agent publishes its fleet status every few seconds. boto3 would add ~25 MB to an
agent that otherwise stays small (agentdownload.py keeps boto3 in a child process for that
reason), so these few calls are made with urllib and a SigV4 signature written out here.
A PUT replaces an object whole: a reader sees the old object or the new one, never half.
Credentials come from the same S3Settings as every other S3 call (DVC config, environment).
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from ggufops.artifacts.s3config import S3Settings
from ggufops.errors import S3ObjectError
from ggufops.redact import redact

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_UNRESERVED = "-_.~"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Listed:
    """One object of a listing; `modified` is S3's clock (seconds since the epoch)."""

    key: str
    modified: float


@dataclass(frozen=True)
class Listing:
    objects: list[Listed]
    server_time: float  # the Date header of the answer: S3's clock, to compare `modified`


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class S3Objects:
    """PUT/GET/LIST of small objects in the bucket of `settings` (path-style with an
    endpoint, virtual-hosted on AWS)."""

    def __init__(self, settings: S3Settings, timeout: float = 10.0) -> None:
        if not settings.access_key_id or not settings.secret_access_key:
            raise S3ObjectError(f"no S3 credentials for {settings.url}: set AWS_ACCESS_KEY_ID "
                                "and AWS_SECRET_ACCESS_KEY (or the DVC remote's "
                                "access_key_id/secret_access_key in .dvc/config.local)")
        self.settings = settings
        self.timeout = timeout
        self.region = settings.region or "us-east-1"

    def put(self, key: str, body: bytes, content_type: str = "application/json") -> None:
        self._send(self._signed("PUT", key, {}, body, {"content-type": content_type}))

    def get(self, key: str) -> bytes | None:
        """The object's bytes, None if there is none."""
        try:
            body, _ = self._send(self._signed("GET", key, {}, b"", {}))
        except _NotFound:
            return None
        return body

    def list(self, prefix: str) -> Listing:
        """Every object under `prefix` (all pages), with S3's time of the answer."""
        objects: list[Listed] = []
        token: str | None = None
        server_time = 0.0
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            body, server_time = self._send(self._signed("GET", "", query, b"", {}))
            page, token = _parse_listing(body, self.settings.url)
            objects.extend(page)
            if token is None:
                return Listing(objects, server_time)

    # signing (AWS Signature Version 4, service s3)

    def _signed(self, method: str, key: str, query: dict[str, str], body: bytes,
                extra: dict[str, str]) -> _Request:
        host, path = self._where(key)
        now = datetime.now(UTC)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        headers = {"host": host, "x-amz-date": stamp,
                   "x-amz-content-sha256": hashlib.sha256(body).hexdigest(), **extra}
        if self.settings.session_token:
            headers["x-amz-security-token"] = self.settings.session_token
        canonical_query = "&".join(f"{_quote(k, '')}={_quote(v, '')}"
                                   for k, v in sorted(query.items()))
        signed = ";".join(sorted(headers))
        canonical = "\n".join([method, path, canonical_query,
                               "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
                               signed, headers["x-amz-content-sha256"]])
        scope = f"{stamp[:8]}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(stamp[:8]), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.settings.access_key_id}/"
                                    f"{scope}, SignedHeaders={signed}, Signature={signature}")
        scheme = self._base().scheme or "https"
        url = f"{scheme}://{host}{path}" + (f"?{canonical_query}" if canonical_query else "")
        return _Request(method, url, headers, body)

    def _signing_key(self, day: str) -> bytes:
        key = ("AWS4" + str(self.settings.secret_access_key)).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return key

    def _base(self) -> urllib.parse.SplitResult:
        endpoint = self.settings.endpoint_url or f"https://s3.{self.region}.amazonaws.com"
        return urllib.parse.urlsplit(endpoint)

    def _where(self, key: str) -> tuple[str, str]:
        """(host, canonical path) of `key` ("" for the bucket itself)."""
        base = self._base()
        bucket = self.settings.bucket
        if self.settings.endpoint_url:
            prefix = base.path.rstrip("/")
            return base.netloc, _quote(f"{prefix}/{bucket}" + (f"/{key}" if key else ""), "/")
        return f"{bucket}.{base.netloc}", _quote(f"/{key}", "/")

    # sending

    def _send(self, request: _Request) -> tuple[bytes, float]:
        http = urllib.request.Request(request.url, data=request.body or None,  # noqa: S310
                                      method=request.method, headers=request.headers)
        try:
            with urllib.request.urlopen(http, timeout=self.timeout) as response:  # noqa: S310
                return response.read(), _date(response.headers.get("Date"))
        except urllib.error.HTTPError as e:
            if e.code == 404 and request.method == "GET" and "list-type" not in request.url:
                raise _NotFound from None
            raise S3ObjectError(f"{request.method} {redact(request.url)} answered HTTP "
                                f"{e.code}: {_code(e.read())}; check the bucket and the "
                                "credentials (AWS_ACCESS_KEY_ID)") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise S3ObjectError(f"S3 at {self.settings.where} does not answer ({reason}); "
                                "check the endpoint and the network") from None


class _NotFound(Exception):
    pass


def _quote(text: str, safe: str) -> str:
    return urllib.parse.quote(text, safe=_UNRESERVED + safe)


def _date(header: str | None) -> float:
    if not header:
        return datetime.now(UTC).timestamp()
    return parsedate_to_datetime(header).timestamp()


def _code(body: bytes) -> str:
    try:
        root = ET.fromstring(body)  # noqa: S314 - S3's own error document
    except ET.ParseError:
        return body[:120].decode(errors="replace") or "no body"
    code = root.findtext("Code") or root.findtext(f"{_NS}Code") or "error"
    message = root.findtext("Message") or root.findtext(f"{_NS}Message") or ""
    return f"{code} {message}".strip()


def _parse_listing(body: bytes, where: str) -> tuple[list[Listed], str | None]:
    try:
        root = ET.fromstring(body)  # noqa: S314 - S3's own listing
    except ET.ParseError as e:
        raise S3ObjectError(f"{where}: S3 answered a listing that is not XML ({e})") from None
    objects = []
    for item in root.iter(f"{_NS}Contents"):
        key = item.findtext(f"{_NS}Key") or ""
        modified = item.findtext(f"{_NS}LastModified") or ""
        objects.append(Listed(key, datetime.fromisoformat(modified.replace("Z", "+00:00"))
                              .timestamp()))
    truncated = (root.findtext(f"{_NS}IsTruncated") or "").lower() == "true"
    return objects, (root.findtext(f"{_NS}NextContinuationToken") if truncated else None)
