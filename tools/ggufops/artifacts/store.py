"""The local content-addressed artifact store: `<root>/sha256/<hex>.gguf`.

Objects are named by their sha256, so a name is a promise about the bytes: a file enters
`sha256/` only by an atomic rename of a verified temp file from `<root>/tmp/` (the same
filesystem). Nothing in the store may be a symlink and no name may leave the root: a
sha256 must be 64 lower-case hex digits, and `sha256/`, `tmp/` and every entry are checked
before they are used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from ggufops.atomic import fsync_path
from ggufops.errors import StoreError
from ggufops.hashing import SHA256_HEX, file_sha256

OBJECTS = "sha256"
TMP = "tmp"
SUFFIX = ".gguf"


class ArtifactStore:
    """A directory of verified GGUF files named by sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    @property
    def objects_dir(self) -> Path:
        return self.root / OBJECTS

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP

    def path_for(self, sha256: str) -> Path:
        """Where the object with this sha256 lives (whether or not it is there)."""
        if not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
            raise StoreError(
                f"refusing store name {sha256!r}: an artifact sha256 is 64 lower-case hex "
                "digits; the version file is invalid (run `ggufops validate`)"
            )
        return self.objects_dir / f"{sha256}{SUFFIX}"

    def prepare(self) -> None:
        """Create sha256/ and tmp/; refuse them if they are symlinks or lead elsewhere."""
        for path in (self.root, self.objects_dir, self.tmp_dir):
            self._refuse_symlink(path)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create store directory {path}: {e.strerror}") from None
        real_root = self.root.resolve()
        for path in (self.objects_dir, self.tmp_dir):
            if path.resolve().parent != real_root:
                raise StoreError(f"store directory {path} leads outside {real_root}; refusing")

    def _refuse_symlink(self, path: Path) -> None:
        if path.is_symlink() and path != self.root:
            raise StoreError(
                f"refusing {path}: it is a symlink (to {path.readlink()}) and could write "
                "outside the store; remove it"
            )

    def entry(self, sha256: str) -> Path:
        """path_for(sha256), refusing an entry that is a symlink or not a regular file."""
        path = self.path_for(sha256)
        self._refuse_symlink(self.objects_dir)
        self._refuse_symlink(path)
        if path.exists() and not path.is_file():
            raise StoreError(f"refusing {path}: not a regular file; remove it")
        return path

    def has(self, sha256: str, size: int | None = None) -> bool:
        """True if the object is present (with `size` bytes, when given)."""
        path = self.entry(sha256)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return False
        return size is None or actual == size

    def verify(self, sha256: str) -> bool:
        """Re-hash a stored object: True if its bytes still hash to its name."""
        path = self.entry(sha256)
        return path.is_file() and file_sha256(path) == sha256

    def clean_tmp(self, older_than: float = 3600.0) -> list[Path]:
        """Remove temp files left by killed downloads (older than `older_than` seconds)."""
        removed = []
        cutoff = time.time() - older_than
        for path in self.tmp_dir.glob("*") if self.tmp_dir.is_dir() else ():
            with contextlib.suppress(OSError):
                if path.is_file() and path.lstat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
        return removed


def export_file(source: Path, output: Path) -> Path:
    """Put `source` at `output` atomically: a hardlink if possible, else a copy."""
    output = output.absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            fsync_path(tmp)
        tmp.replace(output)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise StoreError(f"cannot write {output}: {e.strerror or e}") from None
        raise
    return output

