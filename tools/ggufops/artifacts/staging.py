"""A private copy of a file being registered, hashed while it is written.

`register` never uploads or tracks the caller's file itself (it could change under us, and
linking it into DVC's cache would let a later in-place rewrite corrupt the cache). It reads
it exactly once: every chunk goes to the md5 (DVC's id, the S3 key), to the sha256 (the
registry's id) and into a private copy in `.dvc/tmp/ggufops-register/` (git-ignored by
DVC's own .dvc/.gitignore), on three threads: the S3 key needs the md5 of the whole file
before the upload can start, so this read is on the critical path. That copy
is what is uploaded and then renamed into DVC's cache, so the bytes hashed are the bytes
stored. Its name carries the pid of its process; a copy whose process is gone (a killed
register) is removed by the next register.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops.errors import StoreError
from ggufops.progress import Progress

CHUNK = 4 * 1024 * 1024
IN_FLIGHT = 2  # chunks handed to the sha256 and write threads and not yet done
STAGING_DIR = ".dvc/tmp/ggufops-register"
SUFFIX = ".part"


@dataclass(frozen=True)
class Digest:
    """What one read of a file found: its sha256, its md5 (DVC's id) and its size."""

    sha256: str
    md5: str
    size: int


def staging_dir(root: Path) -> Path:
    return root / STAGING_DIR


@contextlib.contextmanager
def staged_file(root: Path) -> Iterator[Path]:
    """A new, empty temp file in the staging area; removed on exit unless moved away."""
    directory = staging_dir(root)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create {directory}: {e.strerror}; check its permissions") \
            from None
    remove_orphans(directory)
    fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}.", suffix=SUFFIX, dir=directory)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_orphans(directory: Path) -> list[Path]:
    """Remove staged copies whose process no longer runs (left by a killed register)."""
    removed = []
    for path in directory.glob(f"*{SUFFIX}"):
        pid = path.name.split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def copy_hashing(source: Path, dest: Path, progress: Progress | None = None) -> Digest:
    """Copy `source` over `dest` in one read, computing md5 and sha256 of the same bytes.

    md5 runs on this thread, sha256 and the write each on their own (hashlib and file
    writes release the GIL), at most IN_FLIGHT chunks ahead; each chunk is a fresh bytes
    object, so no thread sees it change. `dest` is not fsynced here.
    """
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    # the pools are shut down (their work finished) before the files are closed
    with _open_source(source) as src, _open_dest(dest) as dst, \
            ThreadPoolExecutor(1, "sha256") as hasher, ThreadPoolExecutor(1, "write") as writer:
        pending: deque[tuple[Future[None], Future[None]]] = deque()
        while chunk := src.read(CHUNK):
            pending.append((hasher.submit(sha.update, chunk),
                            writer.submit(_write, dst, chunk, dest)))
            md5.update(chunk)
            size += len(chunk)
            while len(pending) >= IN_FLIGHT:
                _wait(pending.popleft())
            if progress is not None:
                progress(len(chunk))
        while pending:
            _wait(pending.popleft())
    return Digest(sha.hexdigest(), md5.hexdigest(), size)


def _wait(futures: tuple[Future[None], Future[None]]) -> None:
    for future in futures:
        future.result()


@contextlib.contextmanager
def _open_source(source: Path) -> Iterator[Any]:
    try:
        f = source.open("rb", buffering=0)
    except OSError as e:
        raise StoreError(f"cannot read {source}: {e.strerror}") from None
    with f:
        yield f


@contextlib.contextmanager
def _open_dest(dest: Path) -> Iterator[Any]:
    with dest.open("wb") as f:  # buffered: write() takes the whole chunk
        yield f


def _write(f: Any, chunk: bytes, dest: Path) -> None:  # on the writer thread
    try:
        f.write(chunk)
    except OSError as e:
        raise StoreError(
            f"writing a copy of the model to {dest} failed: {e.strerror or e}; free disk "
            "space (or raise the file size limit) and register again"
        ) from None
