"""`pull` on the real SeaweedFS: verified downloads into the store, and every fault."""

from __future__ import annotations

import contextlib
import hashlib
import random
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ggufops.artifacts import s3config
from ggufops.artifacts.dvc import S3Remote
from ggufops.artifacts.pull import pull, pull_object, pull_version
from ggufops.artifacts.register import RegisterRequest, register
from ggufops.artifacts.s3server import ServerInfo
from ggufops.artifacts.store import ArtifactStore
from ggufops.cli import main
from ggufops.errors import ArtifactSizeMismatch, ChecksumMismatch, ObjectMissing, StoreError
from ggufops.procs import free_port
from ggufops.progress import wanted as progress_wanted
from ggufops.registry.registry import Registry, VersionRef
from testing.repos import git, git_commit, make_remote
from testing.s3 import configure_s3, s3_client, write_tiny_gguf


def _register(root: Path, tmp_path: Path, version: str, push: bool = True) -> dict:
    source = write_tiny_gguf(tmp_path / f"src-{version}.gguf", seed=random.randrange(1 << 30),
                             extra_bytes=2_500_000)
    return register(Registry(root), RegisterRequest(source, "tiny", version, push=push)).doc


def _dead_endpoint(root: Path) -> str:
    dead = f"http://127.0.0.1:{free_port()}"
    s3config.update_local_config(root, "models", {"endpointurl": dead})
    return dead


def _store_listing(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file()}


def _key(root: Path, doc: dict) -> str:
    return s3config.resolve(root).key(f"files/md5/{doc['artifact']['dvc_md5'][:2]}/"
                                      f"{doc['artifact']['dvc_md5'][2:]}")


def test_register_commit_then_pull_in_another_clone(
    s3_registry: Path, s3_server: ServerInfo, tmp_path: Path
) -> None:
    doc = _register(s3_registry, tmp_path, "1.0.0")
    git_commit(s3_registry, "register tiny-v1.0.0")
    bare = make_remote(tmp_path, s3_registry)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    assert not (clone / "registry/tiny/1.0.0.gguf").exists()  # git-ignored, DVC-tracked
    prefix = s3config.resolve(s3_registry).prefix
    configure_s3(clone, s3_server, prefix=prefix)
    store = tmp_path / "store"
    result = pull(Registry(clone), "tiny@1.0.0", store, progress=False)
    assert result.downloaded
    assert result.path == store / "sha256" / f"{doc['artifact']['sha256']}.gguf"
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == doc["artifact"]["sha256"]
    assert result.path.stat().st_size == doc["artifact"]["size"]
    assert list((store / "tmp").iterdir()) == []
    # a second pull does not download: it works even with the S3 server unreachable
    _dead_endpoint(clone)
    again = pull(Registry(clone), VersionRef("tiny", "1.0.0"), store, progress=False)
    assert not again.downloaded
    assert again.path == result.path
    assert pull_version(Registry(clone), "tiny@1.0.0", store) == result.path


def test_cli_pull_with_output(s3_registry: Path, tmp_path: Path) -> None:
    doc = _register(s3_registry, tmp_path, "1.0.0")
    out = tmp_path / "deploy" / "model.gguf"
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["-C", str(s3_registry), "pull", "tiny@1.0.0",
                                       "--store", str(store), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "downloaded and verified" in result.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == doc["artifact"]["sha256"]
    second = CliRunner().invoke(main, ["-C", str(s3_registry), "pull", "tiny@1.0.0",
                                       "--store", str(store), "--json"])
    assert second.exit_code == 0
    assert '"downloaded": false' in second.output


def test_replaced_object_is_refused_and_store_untouched(
    s3_registry: Path, s3_server: ServerInfo, tmp_path: Path
) -> None:
    registry = Registry(s3_registry)
    store = tmp_path / "store"
    first = _register(s3_registry, tmp_path, "1.0.0")
    pull(registry, "tiny@1.0.0", store, progress=False)
    second = _register(s3_registry, tmp_path, "1.1.0")
    # someone replaces the object in S3: same size, one byte different
    key = _key(s3_registry, second)
    client = s3_client(s3_server)
    data = bytearray(client.get_object(Bucket="models", Key=key)["Body"].read())  # type: ignore[attr-defined]
    data[-1] ^= 0xFF
    client.put_object(Bucket="models", Key=key, Body=bytes(data))  # type: ignore[attr-defined]
    out = tmp_path / "current.gguf"
    out.write_bytes(b"the model that runs now")
    before = _store_listing(store)
    with pytest.raises(ChecksumMismatch) as e:
        pull(registry, "tiny@1.1.0", store, output=out, progress=False)
    message = str(e.value)
    assert "tiny@1.1.0" in message
    assert second["artifact"]["sha256"] in message
    assert key in message
    assert _store_listing(store) == before  # nothing added, nothing removed
    assert f"sha256/{first['artifact']['sha256']}.gguf" in before
    assert out.read_bytes() == b"the model that runs now"


def test_store_entry_with_wrong_size_is_fetched_again(s3_registry: Path, tmp_path: Path) -> None:
    doc = _register(s3_registry, tmp_path, "1.0.0")
    store = ArtifactStore(tmp_path / "store")
    store.prepare()
    entry = store.path_for(doc["artifact"]["sha256"])
    entry.write_bytes(b"half a file")
    result = pull(Registry(s3_registry), "tiny@1.0.0", store.root, progress=False)
    assert result.downloaded
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == doc["artifact"]["sha256"]


def test_missing_object_names_version_and_key(s3_registry: Path, tmp_path: Path) -> None:
    doc = _register(s3_registry, tmp_path, "1.0.0", push=False)
    store = tmp_path / "store"
    with pytest.raises(ObjectMissing) as e:
        pull(Registry(s3_registry), "tiny@1.0.0", store, progress=False)
    assert "tiny@1.0.0" in str(e.value)
    assert _key(s3_registry, doc) in str(e.value)
    assert _store_listing(store) == {}


def test_cli_pull_with_server_down(s3_registry: Path, tmp_path: Path) -> None:
    _register(s3_registry, tmp_path, "1.0.0")
    dead = _dead_endpoint(s3_registry)
    result = CliRunner().invoke(main, ["-C", str(s3_registry), "pull", "tiny@1.0.0",
                                       "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert dead in lines[0]
    assert "ggufops s3 serve" in lines[0]


def test_wrong_credentials(s3_registry: Path, tmp_path: Path) -> None:
    _register(s3_registry, tmp_path, "1.0.0")
    s3config.update_local_config(s3_registry, "models", {"access_key_id": "WRONG"})
    result = CliRunner().invoke(main, ["-C", str(s3_registry), "pull", "tiny@1.0.0",
                                       "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert "rejected the credentials (InvalidAccessKeyId)" in result.output


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: no file the child writes can grow past `limit` bytes."""
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _cli_pull(root: Path, ref: str, store: Path,
              file_size_limit: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "ggufops"), "-C", str(root), "pull", ref,
         "--store", str(store)],
        capture_output=True, text=True, preexec_fn=_file_size_limit(file_size_limit),
        check=False,
    )


def test_disk_write_failure_removes_temp(s3_registry: Path, tmp_path: Path) -> None:
    doc = _register(s3_registry, tmp_path, "1.0.0")  # 2.5 MB > the 1 MB limit below
    store = tmp_path / "store"
    proc = _cli_pull(s3_registry, "tiny@1.0.0", store, 1_000_000)
    assert proc.returncode == 1, proc.stderr
    assert "failed" in proc.stderr
    assert "free disk space" in proc.stderr
    assert list((store / "tmp").iterdir()) == []
    assert not (store / "sha256" / f"{doc['artifact']['sha256']}.gguf").exists()


def test_symlinked_store_dir_is_refused(s3_registry: Path, tmp_path: Path) -> None:
    _register(s3_registry, tmp_path, "1.0.0")
    outside = tmp_path / "outside"
    outside.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    (store / "sha256").symlink_to(outside)
    with pytest.raises(StoreError, match="symlink"):
        pull(Registry(s3_registry), "tiny@1.0.0", store, progress=False)
    assert list(outside.iterdir()) == []


def test_symlinked_entry_is_refused(s3_registry: Path, tmp_path: Path) -> None:
    doc = _register(s3_registry, tmp_path, "1.0.0")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"do not overwrite")
    store = ArtifactStore(tmp_path / "store")
    store.prepare()
    store.path_for(doc["artifact"]["sha256"]).symlink_to(victim)
    with pytest.raises(StoreError, match="symlink"):
        pull(Registry(s3_registry), "tiny@1.0.0", store.root, progress=False)
    assert victim.read_bytes() == b"do not overwrite"


def test_dotdot_sha_in_version_file_is_refused(s3_registry: Path, tmp_path: Path) -> None:
    _register(s3_registry, tmp_path, "1.0.0")
    path = s3_registry / "registry/tiny/1.0.0.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["artifact"]["sha256"] = "../../escaped"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    store = tmp_path / "store"
    with pytest.raises(StoreError, match=r"refusing store name '\.\./\.\./escaped'"):
        pull(Registry(s3_registry), "tiny@1.0.0", store, progress=False)
    assert not (tmp_path / "escaped.gguf").exists()
    assert not (store / "escaped.gguf").exists()


def test_pull_object_by_identity(s3_registry: Path, tmp_path: Path) -> None:
    doc = _register(s3_registry, tmp_path, "1.0.0")
    art = doc["artifact"]
    path = pull_object(tmp_path / "store", sha256=art["sha256"], dvc_md5=art["dvc_md5"],
                       size=art["size"], remote=S3Remote.from_repo(s3_registry), progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == art["sha256"]


def test_progress_only_on_a_terminal_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_wanted(True) is True
    assert progress_wanted(False) is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv("CI", raising=False)
    assert progress_wanted(None) is True
    monkeypatch.setenv("CI", "true")
    assert progress_wanted(None) is False
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert progress_wanted(None) is False


class _TmpSampler(threading.Thread):
    """Samples the bytes in a store's tmp/ until stopped: the largest total it saw."""

    def __init__(self, tmp_dir: Path) -> None:
        super().__init__(daemon=True)
        self.tmp_dir = tmp_dir
        self.largest = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total = 0
            for path in self.tmp_dir.glob("*") if self.tmp_dir.is_dir() else ():
                with contextlib.suppress(FileNotFoundError):
                    total += path.stat().st_size
            self.largest = max(self.largest, total)
            self.samples += 1
            self._stop_event.wait(0.002)

    def __enter__(self) -> _TmpSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join()


def _replace_object(s3_server: ServerInfo, key: str, tmp_path: Path, size: int) -> None:
    """Put `size` bytes (a sparse file of zeros; multipart above 8 MiB) at `key`."""
    blob = tmp_path / "replacement.bin"
    with blob.open("wb") as f:
        f.truncate(size)
    s3_client(s3_server).upload_file(str(blob), "models", key)  # type: ignore[attr-defined]
    blob.unlink()


def _count_gets(remote: S3Remote) -> list[str]:
    sent: list[str] = []
    remote.client.meta.events.register(
        "before-send.s3.GetObject", lambda request, **_: sent.append(request.url))
    return sent


@pytest.mark.slow
@pytest.mark.parametrize("replacement", [200 * 1024 * 1024, "shorter"], ids=["200MiB", "shorter"])
def test_object_of_the_wrong_size_is_refused_without_filling_tmp(
    s3_registry: Path, s3_server: ServerInfo, tmp_path: Path, replacement: int | str
) -> None:
    doc = _register(s3_registry, tmp_path, "1.0.0")
    expected = doc["artifact"]["size"]
    actual = replacement if isinstance(replacement, int) else expected // 2
    key = _key(s3_registry, doc)
    _replace_object(s3_server, key, tmp_path, actual)
    store = tmp_path / "store"
    (store / "tmp").mkdir(parents=True)
    # the CLI, in a process that cannot write a file past the expected size (+64 KiB)
    with _TmpSampler(store / "tmp") as sampler:
        proc = _cli_pull(s3_registry, "tiny@1.0.0", store, expected + 65536)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f"error: tiny@1.0.0: s3://models/{key} is {actual} bytes, the version file says "
        f"{expected}; the object in S3 was replaced or truncated: refused before downloading "
        "it (nothing was stored); put the artifact's bytes back at that key from a clone that "
        "has the file, or deploy another version")
    assert sampler.samples > 0
    assert sampler.largest <= expected
    assert list((store / "tmp").iterdir()) == []
    assert list((store / "sha256").iterdir()) == []
    # the Python API raises the permanent error after one GET: no retry, every time
    remote = S3Remote.from_repo(s3_registry)
    gets = _count_gets(remote)
    for attempt in (1, 2):
        with pytest.raises(ArtifactSizeMismatch):
            pull(Registry(s3_registry), "tiny@1.0.0", store, progress=False, remote=remote)
        assert len(gets) == attempt
    assert list((store / "tmp").iterdir()) == []
