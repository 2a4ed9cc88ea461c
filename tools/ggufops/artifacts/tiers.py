"""Retention tiers: a warm remote for what may be rolled back to, a cold one for the archive.

The warm tier is the DVC remote `models`. The cold tier is a second DVC remote named in
policy (`retention.cold_remote`, e.g. a bucket whose objects carry a cheaper storage
class); both use DVC's key layout, files/md5/<2>/<30>.

Nothing is ever lost: a move copies the object, reads the copy back and checks its
sha256 and size against the version file, and only then removes the warm copy. A restore
copies back and verifies the same way, and keeps the cold copy. At every moment the
object exists, verified, in at least one tier.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ggufops.artifacts import dvc as artifacts
from ggufops.errors import ArtifactMissing, ChecksumMismatch, TierError
from ggufops.registry.records import ArtifactRef
from ggufops.registry.registry import VersionRef
from ggufops.registry.warmset import warm_count

WARM = "warm"
COLD = "cold"


@dataclass(frozen=True)
class TierPolicy:
    warm: int  # versions per environment and model kept warm: current + (warm - 1) before it
    cold_remote: str | None  # DVC remote of the cold tier; None: no cold tier


def tier_policy(policy: Any) -> TierPolicy:
    section = policy.get("retention") if isinstance(policy, dict) else None
    cold = section.get("cold_remote") if isinstance(section, dict) else None
    return TierPolicy(warm_count(policy), str(cold) if cold else None)


@dataclass(frozen=True)
class TierObject:
    """What a version file says its object is."""

    ref: VersionRef
    md5: str
    sha256: str
    size: int

    @classmethod
    def of(cls, ref: VersionRef, doc: dict[str, Any]) -> TierObject:
        a = ArtifactRef.from_doc(doc["artifact"])
        return cls(ref, a.dvc_md5, a.sha256, a.size)


@dataclass
class Move:
    """What a tier move did."""

    ref: str
    to_tier: str
    source: str  # s3 URL
    destination: str  # s3 URL
    copied: bool  # False: the destination already held a verified copy
    verified: bool
    removed_from: str | None  # the URL removed after verification (a move to cold only)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tiers:
    warm: artifacts.S3Remote
    cold: artifacts.S3Remote

    @classmethod
    def from_repo(cls, root: Path, policy: TierPolicy) -> Tiers:
        if policy.cold_remote is None:
            raise TierError("registry/policy.yaml names no cold tier (retention.cold_remote); "
                            "add a second DVC remote (`dvc remote add models-cold "
                            "s3://models-cold`) and name it there")
        return cls(artifacts.S3Remote.from_repo(root),
                   artifacts.S3Remote.from_repo(root, policy.cold_remote))

    def remote(self, tier: str) -> artifacts.S3Remote:
        return self.warm if tier == WARM else self.cold

    def url(self, tier: str, artifact: TierObject) -> str:
        remote = self.remote(tier)
        return remote.settings.url_of(remote.key_for_md5(artifact.md5))

    def has(self, tier: str, artifact: TierObject) -> bool:
        remote = self.remote(tier)
        info = remote.stat(remote.key_for_md5(artifact.md5))
        return info is not None and info.size == artifact.size

    def where(self, artifact: TierObject) -> list[str]:
        return [t for t in (WARM, COLD) if self.has(t, artifact)]


def to_cold(tiers: Tiers, artifact: TierObject) -> Move:
    """Copy to cold, verify there, then remove from warm."""
    move = _copy(tiers, artifact, WARM, COLD)
    warm = tiers.warm
    if tiers.has(WARM, artifact):
        _delete(warm, warm.key_for_md5(artifact.md5))
        move.removed_from = move.source
    return move


def to_warm(tiers: Tiers, artifact: TierObject) -> Move:
    """Copy back to warm and verify; the cold copy stays."""
    return _copy(tiers, artifact, COLD, WARM)


def _copy(tiers: Tiers, artifact: TierObject, src: str, dst: str) -> Move:
    source, dest = tiers.remote(src), tiers.remote(dst)
    src_key, dst_key = source.key_for_md5(artifact.md5), dest.key_for_md5(artifact.md5)
    move = Move(str(artifact.ref), dst, tiers.url(src, artifact), tiers.url(dst, artifact),
                copied=False, verified=False, removed_from=None)
    if tiers.has(dst, artifact) and _verifies(dest, dst_key, artifact):
        move.verified = True
        return move
    if not tiers.has(src, artifact):
        raise ArtifactMissing(f"{artifact.ref}: its object is in neither tier ({move.source} "
                              f"nor {move.destination}); push it again with `dvc push` from "
                              "a machine that has it")
    with _scratch_file() as tmp:
        source.download_verified(src_key, artifact.sha256, tmp, size=artifact.size,
                                 label=f"{artifact.ref} ({src} tier)")
        dest.upload(tmp, dst_key, label=f"{artifact.ref} ({dst} tier)")
    move.copied = True
    if not _verifies(dest, dst_key, artifact):
        raise TierError(f"{artifact.ref}: the copy at {move.destination} does not match sha256 "
                        f"{artifact.sha256[:12]}…; the {src} copy was kept, try again")
    move.verified = True
    return move


def _verifies(remote: artifacts.S3Remote, key: str, artifact: TierObject) -> bool:
    """Read the object back and check its sha256 and size against the version file."""
    with _scratch_file() as tmp:
        try:
            remote.download_verified(key, artifact.sha256, tmp, size=artifact.size,
                                     label=str(artifact.ref))
        except ChecksumMismatch:
            return False
    return True


@contextlib.contextmanager
def _scratch_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ggufops-tier-") as tmp:
        yield Path(tmp) / "object"


def _delete(remote: artifacts.S3Remote, key: str) -> None:
    """Remove the warm copy; called only after the cold copy verified."""
    with artifacts._s3_errors(remote.settings, key):
        remote.client.delete_object(Bucket=remote.settings.bucket, Key=key)

