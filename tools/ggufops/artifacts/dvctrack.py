"""Track a file the way `dvc add` does, without running DVC.

Running DVC costs seconds (its import alone), hashes the file again and, with its default
`cache.type` on filesystems without reflinks, copies it into its cache. `register` already
holds a private, hashed copy of the file, so it writes what `dvc add` (DVC 3) would leave,
byte for byte, by moving that copy into the cache:

  <cache>/files/md5/<md5[:2]>/<md5[2:]>  the bytes, mode 0444 (DVC's "protected" mode,
                                           which DVC trusts without hashing again)
  registry/<model>/<X.Y.Z>.gguf          the workspace file, made from the cache entry
                                           with the first link type that works
  registry/<model>/<X.Y.Z>.gguf.dvc      the pointer: outs: [{md5, size, hash: md5, path}]
  registry/<model>/.gitignore            `/<X.Y.Z>.gguf` appended, unless git already
                                           ignores the file

The cache directory and link types come from DVC's config (system, global, .dvc/config,
.dvc/config.local; later wins), as DVC reads them: `cache.dir` (relative to the config
file that sets it), `cache.type` (tried in order: reflink, hardlink, symlink, copy) and
`cache.shared`. Without a `cache.type`, the order is reflink, hardlink, copy: DVC's own
default (reflink, copy) would write the whole file a second time on ext4. A hardlinked
workspace file shares the cache entry's read-only mode, as with DVC's `hardlink` type.

DVC's state database (hashes keyed by inode, mtime and size) is not written: the
workspace file is a new inode, so no stale entry can match it, and the first DVC command
that looks at it hashes it once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from ggufops import git
from ggufops.artifacts import s3config
from ggufops.artifacts.dvc import DvcOut
from ggufops.artifacts.staging import Digest
from ggufops.atomic import atomic_write_text, fsync_path
from ggufops.errors import DvcError

LINK_TYPES = ("reflink", "hardlink", "symlink", "copy")
UNSET_LINK_TYPES = ("reflink", "hardlink", "copy")
PROTECTED_MODE = 0o444
FICLONE = 0x40049409  # linux/fs.h
# errors that mean "this link type does not work here: try the next" (as DVC decides)
_LINK_UNSUPPORTED = frozenset({errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.ENOTTY,
                               errno.ENOSYS, errno.EINVAL, errno.EAGAIN, errno.EMLINK})
_PLAIN_NAME = re.compile(r"^[0-9A-Za-z._+-]+$")
_GITIGNORE_SPECIAL = "[]!*#?"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask is process-wide, so not while threads run


@dataclass(frozen=True)
class DvcCache:
    """DVC's local cache as configured for one repository."""

    directory: Path
    link_types: tuple[str, ...]
    shared: bool = False

    @classmethod
    def from_repo(cls, root: Path) -> DvcCache:
        directory, types, shared = root / ".dvc" / "cache", "", ""
        for path in config_files(root):
            section = s3config.read_config_file(path).get("cache", {})
            if section.get("dir"):  # relative to the config file's directory, as in DVC
                directory = path.parent / Path(section["dir"]).expanduser()
            types = section.get("type", types)
            shared = section.get("shared", shared)
        absolute = Path(os.path.normpath(directory.absolute()))  # DVC's abspath: no resolve
        return cls(absolute, _link_types(types, root), shared.lower() == "group")

    def entry(self, md5: str) -> Path:
        """Where DVC 3 keeps the object with this md5."""
        return self.directory / "files" / "md5" / md5[:2] / md5[2:]

    @property
    def file_mode(self) -> int:
        """Mode of a file DVC copies out of its cache (umask applies unless shared)."""
        return 0o664 if self.shared else 0o666 & ~_UMASK

    @property
    def dir_mode(self) -> int:
        return 0o2775 if self.shared else 0o777 & ~_UMASK


def config_files(root: Path) -> list[Path]:
    """DVC's config files, lowest precedence first: system, global, repo, local."""
    import platformdirs

    system = os.environ.get("DVC_SYSTEM_CONFIG_DIR") or platformdirs.site_config_dir(
        "dvc", "iterative")
    user = os.environ.get("DVC_GLOBAL_CONFIG_DIR") or platformdirs.user_config_dir(
        "dvc", "iterative")
    return [Path(system) / "config", Path(user) / "config", root / s3config.CONFIG,
            root / s3config.CONFIG_LOCAL]


def _link_types(value: str, root: Path) -> tuple[str, ...]:
    if not value.strip():
        return UNSET_LINK_TYPES
    types = tuple(t.strip() for t in value.split(",") if t.strip())
    unknown = [t for t in types if t not in LINK_TYPES]
    if unknown or not types:
        raise DvcError(
            f"DVC config of {root}: cache.type {value!r} names {', '.join(unknown) or 'nothing'}"
            f"; use a comma-separated list of {', '.join(LINK_TYPES)} (`dvc config cache.type`)"
        )
    return types


def track(root: Path, staged: Path, target: Path, digest: Digest) -> DvcOut:
    """Move the hashed copy `staged` into DVC's cache, make `target` from it, and write the
    pointer and .gitignore entry, exactly as `dvc add target` would."""
    cache = DvcCache.from_repo(root)
    entry = add_to_cache(cache, staged, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    link_workspace(cache, entry, target)
    ignore(root, target)
    pointer = target.with_name(target.name + ".dvc")
    atomic_write_text(pointer, pointer_text(digest.md5, digest.size, target.name))
    return DvcOut(pointer, digest.md5, digest.size, target.name)


def add_to_cache(cache: DvcCache, staged: Path, digest: Digest) -> Path:
    """Move `staged` (fsynced) to its cache entry, protected (0444); copy it if the cache is
    on another filesystem. An entry that is already there is replaced by these bytes."""
    entry = cache.entry(digest.md5)
    _makedirs(cache, entry.parent)
    staged.chmod(PROTECTED_MODE)
    try:
        staged.replace(entry)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise _cache_error(entry, e) from None
        _copy_into(staged, entry, PROTECTED_MODE)
    fsync_path(entry.parent)
    return entry


def _makedirs(cache: DvcCache, directory: Path) -> None:
    try:
        directory.mkdir(mode=cache.dir_mode, parents=True, exist_ok=True)
    except OSError as e:
        raise _cache_error(directory, e) from None


def _cache_error(path: Path, e: OSError) -> DvcError:
    return DvcError(
        f"cannot write DVC's cache at {path}: {e.strerror or e}; check the permissions and "
        "free space of the cache directory (`dvc cache dir`)"
    )


def link_workspace(cache: DvcCache, entry: Path, target: Path) -> str:
    """Replace `target` (atomically) by a link to `entry`: the first of the cache's link
    types that works here. Returns the link type used."""
    tried = []
    for link_type in cache.link_types:
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            _make_link(link_type, entry, tmp, cache)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if e.errno not in _LINK_UNSUPPORTED:
                raise DvcError(f"cannot create {target}: {e.strerror or e}") from None
            tried.append(f"{link_type} ({e.strerror or e})")
            continue
        _replace(tmp, target)
        return link_type
    raise DvcError(
        f"cannot link {target} to DVC's cache entry {entry}: {'; '.join(tried)}; add "
        "`copy` to the cache's link types (`dvc config cache.type hardlink,copy`)"
    )


def _replace(tmp: Path, target: Path) -> None:
    try:
        tmp.replace(target)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise DvcError(f"cannot replace {target}: {e.strerror or e}; move it away") from None
    fsync_path(target.parent)


def _make_link(link_type: str, entry: Path, tmp: Path, cache: DvcCache) -> None:
    if link_type == "hardlink":
        os.link(entry, tmp)
    elif link_type == "symlink":
        tmp.symlink_to(entry)
    elif link_type == "reflink":
        _reflink(entry, tmp)
        tmp.chmod(cache.file_mode)
    else:
        _copy_synced(entry, tmp, cache.file_mode)


def _reflink(source: Path, dest: Path) -> None:
    """A copy-on-write clone (btrfs, XFS, ...); EOPNOTSUPP elsewhere."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOTSUP, "reflinks are only tried on Linux")
    import fcntl

    with source.open("rb") as src, dest.open("xb") as dst:
        fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())


def _copy_into(source: Path, dest: Path, mode: int) -> None:
    """Copy `source` to `dest` through a temp file beside it, fsynced, then renamed."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        _copy_synced(source, tmp, mode)
        tmp.replace(dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _copy_synced(source: Path, dest: Path, mode: int) -> None:
    shutil.copyfile(source, dest)
    dest.chmod(mode)
    fsync_path(dest)


def pointer_text(md5: str, size: int, file_name: str) -> str:
    """The .dvc file `dvc add` (DVC 3) writes for one file."""
    if not _PLAIN_NAME.match(file_name):
        raise DvcError(f"{file_name!r}: an artifact file name must be plain (semver + .gguf)")
    return f"outs:\n- md5: {md5}\n  size: {size}\n  hash: md5\n  path: {file_name}\n"


def ignore(root: Path, target: Path) -> Path | None:
    """Append `/<name>` to the .gitignore beside `target` unless git already ignores it
    (DVC's rule); returns the .gitignore written, if any."""
    if git.is_ignored(root, target):
        return None
    gitignore = target.parent / ".gitignore"
    try:
        text = gitignore.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    separator = "\n" if text and not text.endswith("\n") else ""
    atomic_write_text(gitignore, f"{text}{separator}/{_escape(target.name)}\n")
    return gitignore


def _escape(name: str) -> str:
    """Escape gitignore's special characters, as DVC does (pathspec's escape)."""
    return "".join(f"\\{c}" if c in _GITIGNORE_SPECIAL else c for c in name)
