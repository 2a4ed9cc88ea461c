"""S3 settings from DVC's config, and the S3 remote on the real SeaweedFS: HEAD, verified
downloads, and the one-line errors for a dead endpoint, wrong credentials, missing objects."""

from __future__ import annotations

import hashlib
import io
import random
import uuid
from pathlib import Path

import pytest

from ggufops.artifacts import dvc as artifacts
from ggufops.artifacts import s3config
from ggufops.artifacts.dvc import S3Remote, dvc_key, missing_objects
from ggufops.artifacts.s3config import S3Settings
from ggufops.artifacts.s3server import ServerInfo
from ggufops.errors import (
    ArtifactSizeMismatch,
    ChecksumMismatch,
    ObjectMissing,
    S3AuthError,
    S3ConfigError,
    S3Unreachable,
)
from ggufops.procs import free_port
from ggufops.registry.registry import VersionRef
from testing.s3 import configure_s3, s3_client

DVC_CONFIG = """[core]
    remote = models
['remote "models"']
    url = s3://models/team/prefix
    endpointurl = http://127.0.0.1:8333
    access_key_id = TRACKED
"""


def _repo(tmp_path: Path, config: str = DVC_CONFIG, local: str | None = None) -> Path:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(config)
    if local is not None:
        (tmp_path / ".dvc" / "config.local").write_text(local)
    return tmp_path


def test_resolve_reads_dvc_config(tmp_path: Path) -> None:
    s = s3config.resolve(_repo(tmp_path), environ={})
    assert (s.bucket, s.prefix, s.endpoint_url) == ("models", "team/prefix", "http://127.0.0.1:8333")
    assert s.access_key_id == "TRACKED"
    assert s.secret_access_key is None
    assert s.key("files/md5/ab/cd") == "team/prefix/files/md5/ab/cd"


def test_local_config_overrides_and_env_wins_for_credentials(tmp_path: Path) -> None:
    local = "['remote \"models\"']\n    endpointurl = http://127.0.0.1:9999\n" \
            "    access_key_id = LOCAL\n    secret_access_key = LOCALSECRET\n"
    repo = _repo(tmp_path, local=local)
    s = s3config.resolve(repo, environ={})
    assert (s.endpoint_url, s.access_key_id, s.secret_access_key) == (
        "http://127.0.0.1:9999", "LOCAL", "LOCALSECRET")
    s = s3config.resolve(repo, environ={"AWS_ACCESS_KEY_ID": "ENV", "AWS_SECRET_ACCESS_KEY": "ES"})
    assert (s.access_key_id, s.secret_access_key) == ("ENV", "ES")
    assert s.endpoint_url == "http://127.0.0.1:9999"


def test_update_local_config_keeps_other_sections(tmp_path: Path) -> None:
    repo = _repo(tmp_path, local="[core]\n    autostage = true\n")
    path = s3config.update_local_config(repo, "models", {"access_key_id": "NEW"})
    assert path.stat().st_mode & 0o777 == 0o600
    sections = s3config.read_config_file(path)
    assert sections == {"core": {"autostage": "true"}, 'remote "models"': {"access_key_id": "NEW"}}
    assert s3config.resolve(repo, environ={}).access_key_id == "NEW"


def test_written_config_is_read_by_dvc_itself(tmp_path: Path) -> None:
    from dvc.config import Config

    repo = _repo(tmp_path)
    s3config.update_local_config(repo, "models", {"secret_access_key": "S3CRET"})
    config = Config(dvc_dir=str(repo / ".dvc"), validate=True)
    assert config["remote"]["models"]["secret_access_key"] == "S3CRET"
    assert config["remote"]["models"]["url"] == "s3://models/team/prefix"


def test_missing_remote_and_bad_url(tmp_path: Path) -> None:
    repo = _repo(tmp_path, config="[core]\n    remote = models\n")
    with pytest.raises(S3ConfigError, match=r"no DVC remote 'models'.*dvc remote add"):
        s3config.resolve(repo, environ={})
    (repo / ".dvc" / "config").write_text("['remote \"models\"']\n    url = /local/dir\n")
    with pytest.raises(S3ConfigError, match="not s3://bucket"):
        s3config.resolve(repo, environ={})


def test_unparsable_config(tmp_path: Path) -> None:
    repo = _repo(tmp_path, config="this is not ini\n")
    with pytest.raises(S3ConfigError, match=r"\.dvc/config: cannot parse"):
        s3config.resolve(repo, environ={})


def test_dvc_key_layout() -> None:
    md5 = hashlib.md5(b"x").hexdigest()
    assert dvc_key(md5) == f"files/md5/{md5[:2]}/{md5[2:]}"
    with pytest.raises(ValueError):
        dvc_key("../../etc")


# --- on the real server ---------------------------------------------------------------


def _settings(info: ServerInfo, prefix: str, **overrides: str) -> S3Settings:
    values = {"remote": "models", "url": f"s3://models/{prefix}", "bucket": info.bucket,
              "prefix": prefix, "endpoint_url": info.endpoint,
              "access_key_id": info.access_key_id, "secret_access_key": info.secret_access_key,
              **overrides}
    return S3Settings(**values)


def _put(info: ServerInfo, prefix: str, data: bytes) -> tuple[str, str]:
    md5 = hashlib.md5(data).hexdigest()
    key = f"{prefix}/{dvc_key(md5)}"
    s3_client(info).put_object(Bucket="models", Key=key, Body=data)  # type: ignore[attr-defined]
    return md5, key


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_head_and_stat(s3_server: ServerInfo, prefix: str) -> None:
    md5, key = _put(s3_server, prefix, b"hello object")
    remote = S3Remote(_settings(s3_server, prefix))
    assert remote.key_for_md5(md5) == key
    assert remote.head(key)
    info = remote.stat(key)
    assert info is not None
    assert info.size == len(b"hello object")
    assert not remote.head(f"{prefix}/files/md5/00/nothing")


def test_download_verified_writes_only_verified_bytes(
    s3_server: ServerInfo, prefix: str, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 9000  # > 2 MiB: several chunks
    _, key = _put(s3_server, prefix, data)
    remote = S3Remote(_settings(s3_server, prefix))
    seen: list[int] = []
    dest = tmp_path / "out.gguf"
    remote.download_verified(key, hashlib.sha256(data).hexdigest(), dest, size=len(data),
                             progress=seen.append)
    assert dest.read_bytes() == data
    assert sum(seen) == len(data)
    assert len(seen) >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_download_sha_mismatch_leaves_nothing(
    s3_server: ServerInfo, prefix: str, tmp_path: Path
) -> None:
    _, key = _put(s3_server, prefix, b"the real bytes")
    dest = tmp_path / "out.gguf"
    dest.write_bytes(b"previous")
    with pytest.raises(ChecksumMismatch, match=r"sha256 of s3://models/.* the registry says"):
        S3Remote(_settings(s3_server, prefix)).download_verified(
            key, hashlib.sha256(b"other bytes").hexdigest(), dest, label="m@1.0.0")
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


@pytest.mark.parametrize("expected", [13, 11], ids=["object-shorter", "object-longer"])
def test_size_mismatch_is_refused_before_a_byte_is_read(
    s3_server: ServerInfo, prefix: str, tmp_path: Path, expected: int
) -> None:
    data = b"twelve bytes"
    _, key = _put(s3_server, prefix, data)
    received: list[int] = []
    with pytest.raises(ArtifactSizeMismatch) as e:
        S3Remote(_settings(s3_server, prefix)).download_verified(
            key, hashlib.sha256(data).hexdigest(), tmp_path / "o", size=expected,
            label="m@1.0.0", progress=received.append)
    message = str(e.value)
    assert message.startswith(f"m@1.0.0: s3://models/{key} is 12 bytes, the version file says "
                              f"{expected};")
    assert "refused before downloading it" in message
    assert "put the artifact's bytes back at that key" in message
    assert "\n" not in message
    assert isinstance(e.value, ChecksumMismatch)  # callers that refuse bad bytes catch it too
    assert received == []  # no byte of the body was read
    assert list(tmp_path.iterdir()) == []  # not even a temp file was created


class _Body:
    """A response body that never ends (as a lying or unframed stream would)."""

    def __init__(self) -> None:
        self.read_sizes: list[int] = []

    def read(self, n: int) -> bytes:
        self.read_sizes.append(n)
        return b"x" * n


def test_copy_bounded_stops_at_the_first_byte_past_the_size(tmp_path: Path) -> None:
    body = _Body()
    size = artifacts.CHUNK * 2 + 5
    with (tmp_path / "part").open("wb") as f, pytest.raises(ArtifactSizeMismatch) as e:
        artifacts.copy_bounded(body, f, size, what="m@1.0.0", url="s3://models/k")
    assert (tmp_path / "part").stat().st_size == size  # never one byte more on disk
    assert body.read_sizes == [artifacts.CHUNK, artifacts.CHUNK, 5, 1]
    assert f"s3://models/k is more than {size} bytes, the version file says {size}" in str(e.value)
    assert "at the first byte past that size" in str(e.value)


def test_copy_bounded_reports_a_short_stream(tmp_path: Path) -> None:
    data = io.BytesIO(b"short")
    with (tmp_path / "part").open("wb") as f:
        digest, got = artifacts.copy_bounded(data, f, 10, what="m", url="u")
    assert (digest, got) == (hashlib.sha256(b"short").hexdigest(), 5)
    with pytest.raises(ArtifactSizeMismatch, match="u is 5 bytes, the version file says 10"):
        artifacts._check_bytes("m", "u", sha256=digest, size=10, digest=digest, got=got)


def test_upload_multipart_to_the_key(s3_server: ServerInfo, prefix: str, tmp_path: Path) -> None:
    data = random.Random(5).randbytes(artifacts.UPLOAD_PART * 2 + 12345)
    source = tmp_path / "model.gguf"
    source.write_bytes(data)
    remote = S3Remote(_settings(s3_server, prefix))
    key = remote.key_for_md5(hashlib.md5(data).hexdigest())
    sent: list[int] = []
    remote.upload(source, key, progress=sent.append)
    head = s3_client(s3_server).head_object(Bucket="models", Key=key)  # type: ignore[attr-defined]
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert sum(sent) == len(data)
    remote.download_verified(key, hashlib.sha256(data).hexdigest(), tmp_path / "back",
                             size=len(data))
    assert (tmp_path / "back").read_bytes() == data


def test_upload_with_wrong_credentials_is_one_line(
    s3_server: ServerInfo, prefix: str, tmp_path: Path
) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(b"x" * 1000)
    remote = S3Remote(_settings(s3_server, prefix, secret_access_key="wrong"))
    with pytest.raises(S3AuthError, match=r"rejected the credentials \(SignatureDoesNotMatch\)"):
        remote.upload(source, f"{prefix}/files/md5/00/x", label="m@1.0.0")


def test_missing_object_names_version_and_key(
    s3_server: ServerInfo, prefix: str, tmp_path: Path
) -> None:
    key = f"{prefix}/{dvc_key('a' * 32)}"
    with pytest.raises(ObjectMissing) as e:
        S3Remote(_settings(s3_server, prefix)).download_verified(
            key, "b" * 64, tmp_path / "o", label="llama@2.0.0")
    assert "llama@2.0.0" in str(e.value)
    assert f"s3://models/{key}" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("field", "value", "code"), [
    ("secret_access_key", "not-the-secret", "SignatureDoesNotMatch"),
    ("access_key_id", "NOSUCHKEY", "InvalidAccessKeyId"),
])
def test_wrong_credentials(s3_server: ServerInfo, prefix: str, tmp_path: Path, field: str,
                           value: str, code: str) -> None:
    _, key = _put(s3_server, prefix, b"secret model")
    remote = S3Remote(_settings(s3_server, prefix, **{field: value}))
    with pytest.raises(S3AuthError) as e:
        remote.download_verified(key, "c" * 64, tmp_path / "o")
    assert code in str(e.value)
    assert s3_server.endpoint in str(e.value)
    with pytest.raises(S3AuthError, match="rejected the credentials"):
        remote.head(key)


def _dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_connection_refused_names_endpoint(
    s3_server: ServerInfo, prefix: str, tmp_path: Path
) -> None:
    dead = _dead_endpoint()
    remote = S3Remote(_settings(s3_server, prefix, endpoint_url=dead))
    with pytest.raises(S3Unreachable) as e:
        remote.download_verified(f"{prefix}/x", "d" * 64, tmp_path / "o")
    assert dead in str(e.value)
    assert "ggufops s3 serve" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_objects_uses_head(s3_server: ServerInfo, s3_registry: Path) -> None:
    settings = s3config.resolve(s3_registry, environ={})
    present = b"present artifact"
    md5 = hashlib.md5(present).hexdigest()
    s3_client(s3_server).put_object(  # type: ignore[attr-defined]
        Bucket="models", Key=settings.key(dvc_key(md5)), Body=present)
    docs = {
        VersionRef("m", "1.0.0"): {"artifact": {"dvc_md5": md5}},
        VersionRef("m", "2.0.0"): {"artifact": {"dvc_md5": "f" * 32}},
    }
    missing = missing_objects(s3_registry, docs)
    assert missing == [(VersionRef("m", "2.0.0"),
                        f"s3://models/{settings.prefix}/files/md5/ff/{'f' * 30}")]
    assert missing_objects(s3_registry, {}) == []


def test_missing_objects_on_dead_endpoint(s3_server: ServerInfo, s3_registry: Path) -> None:
    configure_s3(s3_registry, s3_server)
    s3config.update_local_config(s3_registry, "models", {"endpointurl": _dead_endpoint()})
    with pytest.raises(S3Unreachable, match="cannot connect"):
        missing_objects(s3_registry,
                        {VersionRef("m", "1.0.0"): {"artifact": {"dvc_md5": "e" * 32}}})


def test_translate_unknown_error_is_one_line(s3_server: ServerInfo) -> None:
    from botocore.exceptions import ClientError

    err = ClientError({"Error": {"Code": "SlowDown", "Message": "x"}}, "GetObject")
    out = artifacts.translate(err, _settings(s3_server, "p"), "p/k")
    assert "SlowDown" in str(out)
    assert "\n" not in str(out)
