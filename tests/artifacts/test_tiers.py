"""Retention tiers (issue 14.2) against a real SeaweedFS, two buckets standing in for them.

Warm: the DVC remote `models` (bucket `models`); cold: a second DVC remote `models-cold`
(bucket `models-cold`), named in policy as retention.cold_remote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from typing import Any

import pytest

from ggufops.artifacts import dvc, s3config
from ggufops.registry.validate import validate_repo
from testing.repos import git, git_commit
from testing.s3 import configure_s3, s3_client
from testing.scratch import MODEL, ScratchS3, cli, ship

pytestmark = pytest.mark.slow  # real S3 with two buckets, six deploys per test

COLD_BUCKET = "models-cold"


@pytest.fixture
def tiered(scratch_s3: ScratchS3) -> tuple[ScratchS3, str]:
    """scratch_s3 with a cold remote, warm: 2, and 1.0.0 -> 2.0.0 -> 2.1.0 in production."""
    client: Any = s3_client(scratch_s3.s3)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                             client.exceptions.BucketAlreadyExists):
        client.create_bucket(Bucket=COLD_BUCKET)
    cold_prefix = f"cold-{uuid.uuid4().hex[:12]}"
    configure_s3(scratch_s3.root, scratch_s3.s3, remote="models-cold")
    s3config.update_local_config(scratch_s3.root, "models-cold",
                                 {"url": f"s3://{COLD_BUCKET}/{cold_prefix}"})
    set_retention(scratch_s3, warm=2, commit=True)
    for version in ("1.0.0", "2.0.0", "2.1.0"):
        ship(scratch_s3.root, f"{MODEL}@{version}")
    return scratch_s3, cold_prefix


def set_retention(scratch: ScratchS3, *, warm: int, commit: bool) -> None:
    path = scratch.root / "registry" / "policy.yaml"
    text = path.read_text().replace("  # cold_remote: models-cold", "  cold_remote: models-cold")
    lines = [f"  warm: {warm}" if line.startswith("  warm: ") else line
             for line in text.splitlines()]
    path.write_text("\n".join(lines) + "\n")
    if commit:
        git_commit(scratch.root, f"policy: warm {warm}, cold tier models-cold")
        git(scratch.root, "push", "-q", "origin", "main")


def cold_key(prefix: str, version: str) -> str:
    md5 = hashlib.md5(f"{MODEL}@{version}".encode()).hexdigest()
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"


def read(scratch: ScratchS3, bucket: str, key: str) -> bytes | None:
    client: Any = s3_client(scratch.s3)
    try:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return body


def where(scratch: ScratchS3, prefix: str, version: str) -> dict[str, bytes | None]:
    return {"warm": read(scratch, scratch.s3.bucket, scratch.object_key(MODEL, version)),
            "cold": read(scratch, COLD_BUCKET, cold_key(prefix, version))}


def test_archive_cold_moves_verified_and_restore_brings_it_back(
        tiered: tuple[ScratchS3, str]) -> None:
    scratch, prefix = tiered
    content = f"{MODEL}@1.0.0".encode()
    assert where(scratch, prefix, "1.0.0") == {"warm": content, "cold": None}

    moved = cli(scratch.root, "archive", f"{MODEL}@1.0.0", "--cold", "--direct", "--push",
                "--json")
    assert moved.exit_code == 0, moved.output + moved.stderr
    result = json.loads(moved.output)["moved"]
    assert result["copied"] and result["verified"]
    assert result["removed_from"].startswith(f"s3://{scratch.s3.bucket}/{scratch.prefix}/")
    assert where(scratch, prefix, "1.0.0") == {"warm": None, "cold": content}
    # 1.0.0 is outside production's warm set (2.1.0 + 2.0.0): nothing to report
    assert validate_repo(scratch.root, find_missing=dvc.missing_objects) == []

    # with warm: 3 it would be a rollback target: named, with the command that fixes it
    set_retention(scratch, warm=3, commit=False)
    problems = [p.message for p in validate_repo(scratch.root, find_missing=dvc.missing_objects)]
    assert len(problems) == 1  # one line per version, naming the first environment
    assert problems[0].startswith(f"production may roll {MODEL} back to {MODEL}@1.0.0 "
                                  "(retention.warm: 3), but its object is not in the warm tier")
    assert problems[0].endswith(f"bring it back with `ggufops restore {MODEL}@1.0.0`")
    git(scratch.root, "checkout", "--", "registry/policy.yaml")

    restored = cli(scratch.root, "restore", f"{MODEL}@1.0.0", "--direct", "--push", "--json")
    assert restored.exit_code == 0, restored.output + restored.stderr
    back = json.loads(restored.output)["moved"]
    assert back["copied"] and back["verified"] and back["removed_from"] is None
    assert where(scratch, prefix, "1.0.0") == {"warm": content, "cold": content}  # cold kept


def test_a_rollback_target_cannot_go_cold(tiered: tuple[ScratchS3, str]) -> None:
    scratch, prefix = tiered
    result = cli(scratch.root, "archive", f"{MODEL}@2.0.0", "--cold", "--direct")
    assert result.exit_code == 1
    assert (f"cannot move {MODEL}@2.0.0 to the cold tier: production, staging may roll back "
            "to it (retention.warm: 2)") in result.stderr
    assert where(scratch, prefix, "2.0.0")["cold"] is None
    assert not (scratch.root / "registry" / MODEL / "lifecycle.yaml").exists()


def test_a_damaged_cold_copy_is_refused_and_nothing_changes(
        tiered: tuple[ScratchS3, str]) -> None:
    scratch, prefix = tiered
    assert cli(scratch.root, "archive", f"{MODEL}@1.0.0", "--cold", "--direct").exit_code == 0
    client: Any = s3_client(scratch.s3)
    client.put_object(Bucket=COLD_BUCKET, Key=cold_key(prefix, "1.0.0"),
                      Body=f"{MODEL}@1.0.X".encode())  # same size, other bytes
    head = scratch.head()

    result = cli(scratch.root, "restore", f"{MODEL}@1.0.0", "--direct")
    assert result.exit_code == 1
    assert "sha256" in result.stderr
    assert where(scratch, prefix, "1.0.0")["warm"] is None  # nothing half-written
    assert scratch.head() == head  # and the status change was not committed
