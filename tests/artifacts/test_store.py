"""The content-addressed store: names, symlink and `..` refusal, export, temp cleanup."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ggufops.artifacts.store import ArtifactStore, export_file
from ggufops.errors import StoreError
from ggufops.hashing import file_sha256

SHA = hashlib.sha256(b"model").hexdigest()


def test_path_for_is_content_addressed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    assert store.path_for(SHA) == tmp_path / "store" / "sha256" / f"{SHA}.gguf"


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "../" + SHA[3:], SHA.upper(), SHA[:-1], SHA + "/x", "", f"/{SHA[1:]}"],
)
def test_path_for_refuses_non_sha_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError, match="64 lower-case hex"):
        ArtifactStore(tmp_path).path_for(name)


def test_prepare_creates_dirs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "s")
    store.prepare()
    assert store.objects_dir.is_dir()
    assert store.tmp_dir.is_dir()


@pytest.mark.parametrize("sub", ["sha256", "tmp"])
def test_prepare_refuses_symlinked_dirs(tmp_path: Path, sub: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "store"
    root.mkdir()
    (root / sub).symlink_to(outside)
    with pytest.raises(StoreError, match="symlink"):
        ArtifactStore(root).prepare()
    assert list(outside.iterdir()) == []


def test_entry_refuses_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.gguf"
    target.write_bytes(b"model")
    store = ArtifactStore(tmp_path / "store")
    store.prepare()
    store.path_for(SHA).symlink_to(target)
    with pytest.raises(StoreError, match="symlink"):
        store.has(SHA)


def test_root_may_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    store = ArtifactStore(tmp_path / "link")
    store.prepare()
    assert (real / "sha256").is_dir()


def test_has_checks_size(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.prepare()
    assert not store.has(SHA)
    store.path_for(SHA).write_bytes(b"model")
    assert store.has(SHA)
    assert store.has(SHA, 5)
    assert not store.has(SHA, 6)
    assert store.verify(SHA)
    store.path_for(SHA).write_bytes(b"other")
    assert not store.verify(SHA)


def test_export_hardlinks_or_copies_atomically(tmp_path: Path) -> None:
    src = tmp_path / "src.gguf"
    src.write_bytes(b"verified bytes")
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    out.write_bytes(b"old")
    export_file(src, out)
    assert out.read_bytes() == b"verified bytes"
    assert os.stat(out).st_ino == os.stat(src).st_ino  # same filesystem: a hardlink
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.gguf"]
    assert file_sha256(out) == hashlib.sha256(b"verified bytes").hexdigest()


def test_clean_tmp_removes_only_old_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.prepare()
    old, new = store.tmp_dir / "old.part", store.tmp_dir / "new.part"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1, 1))
    assert store.clean_tmp(older_than=60) == [old]
    assert [p.name for p in store.tmp_dir.iterdir()] == ["new.part"]
