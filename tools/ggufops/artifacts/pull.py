"""Fetch a model version's artifact into the local store, verified against the registry.

The registry's version file is the trust anchor: it names the sha256 and size of the
artifact and the DVC md5 that is its S3 key. A download lands in `<store>/tmp/`, is hashed
while it arrives, and is renamed to `<store>/sha256/<hex>.gguf` only if it matches; an
object already in the store (with the right size) is not downloaded again. An object of
the wrong length is refused before its first byte is read (ArtifactSizeMismatch, a
permanent error: nothing here retries it), and no download writes past `artifact.size`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops import progress as progress_bars
from ggufops.artifacts.dvc import MD5_HEX, S3Remote
from ggufops.artifacts.store import ArtifactStore, export_file
from ggufops.errors import StoreError
from ggufops.registry.registry import Registry, VersionRef

STORE_ENV = "GGUFOPS_STORE"
DEFAULT_STORE = ".ggufops/store"


@dataclass(frozen=True)
class ObjectToPull:
    """What a pull fetches: the bytes (sha256, size), the S3 key (DVC md5) and a label for
    messages. Read leniently from a version document that may come from any commit (`of`
    names the bad field), unlike `records.ArtifactRef`, which trusts a validated file."""

    sha256: str
    dvc_md5: str
    size: int | None
    label: str

    @classmethod
    def of(cls, doc: Mapping[str, Any], label: str | None = None) -> ObjectToPull:
        """The artifact of a version document (as read from a file or a git commit)."""
        art = doc.get("artifact") if isinstance(doc, Mapping) else None
        name = label or f"{doc.get('name')}@{doc.get('version')}"
        if not isinstance(art, Mapping):
            raise StoreError(f"{name}: the version file has no artifact mapping; run validate")
        md5, size = art.get("dvc_md5"), art.get("size")
        if not isinstance(md5, str) or not MD5_HEX.match(md5):
            raise StoreError(f"{name}: artifact.dvc_md5 {md5!r} is not an md5; run validate")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreError(f"{name}: artifact.size {size!r} is not a byte count; run validate")
        return cls(str(art.get("sha256")), md5, size, name)


@dataclass(frozen=True)
class PullResult:
    path: Path
    downloaded: bool
    artifact: ObjectToPull
    output: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.artifact.label,
            "sha256": self.artifact.sha256,
            "size": self.artifact.size,
            "path": str(self.path),
            "downloaded": self.downloaded,
            "output": str(self.output) if self.output else None,
        }


def default_store(repo: Path) -> Path:
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else repo / DEFAULT_STORE


RemoteSource = S3Remote | Callable[[], S3Remote]


def _remote(source: RemoteSource) -> S3Remote:
    return source if isinstance(source, S3Remote) else source()


def lazy_remote(root: Path) -> Callable[[], S3Remote]:
    """S3Remote.from_repo(root), made on first use and then reused: a run that finds
    every artifact in the store never reads the S3 settings or builds a client."""
    return functools.cache(lambda: S3Remote.from_repo(root))


def pull_artifact(
    store_root: Path,
    artifact: ObjectToPull,
    remote: RemoteSource,
    *,
    progress: bool | None = None,
    verify_existing: bool = False,
) -> PullResult:
    """Make `artifact` present and verified in the store; download only if needed."""
    store = ArtifactStore(store_root)
    store.prepare()
    dest = store.entry(artifact.sha256)
    if store.has(artifact.sha256, artifact.size) and (
        not verify_existing or store.verify(artifact.sha256)
    ):
        return PullResult(dest, False, artifact)
    s3 = _remote(remote)
    key = s3.key_for_md5(artifact.dvc_md5)
    with progress_bars.bar(progress_bars.wanted(progress), artifact.size,
                           artifact.label) as bar:
        s3.download_verified(
            key, artifact.sha256, dest, size=artifact.size, tmp_dir=store.tmp_dir,
            label=artifact.label, progress=bar,
        )  # fmt: skip
    dest.chmod(0o444)
    return PullResult(dest, True, artifact)


def pull_object(
    store_root: Path,
    *,
    sha256: str,
    dvc_md5: str,
    remote: RemoteSource,
    size: int | None = None,
    label: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Pull by identity (for the agent, which reads version docs at a git commit)."""
    artifact = ObjectToPull(sha256, dvc_md5, size, label or sha256[:12])
    return pull_artifact(store_root, artifact, remote, progress=progress).path


def pull(
    registry: Registry,
    ref: VersionRef | str,
    store_root: Path,
    *,
    output: Path | None = None,
    progress: bool | None = None,
    remote: RemoteSource | None = None,
) -> PullResult:
    """`ggufops pull`: the version's artifact into the store (and a copy at `output`)."""
    ref = ref if isinstance(ref, VersionRef) else VersionRef.parse(ref)
    artifact = ObjectToPull.of(registry.load_ref(ref), str(ref))
    result = pull_artifact(store_root, artifact, remote or lazy_remote(registry.root),
                           progress=progress)
    if output is None:
        return result
    return PullResult(result.path, result.downloaded, artifact, export_file(result.path, output))


def pull_version(
    registry: Registry, ref: VersionRef | str, store_root: Path, progress: bool | None = None
) -> Path:
    """The verified store path of `ref`'s artifact."""
    return pull(registry, ref, store_root, progress=progress).path


def pull_doc(doc: Mapping[str, Any], label: str, store_root: Path, remote: RemoteSource, *,
             progress: bool | None = None) -> Path:
    """The verified store path of the artifact of a version file already loaded."""
    return pull_artifact(store_root, ObjectToPull.of(doc, label), remote, progress=progress).path
