"""`register` on a real git repo, real DVC and the real SeaweedFS: what it writes is what
`dvc add` writes, DVC works on what it pushed, and a kill at any phase leaves no lie."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import random
import re
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ggufops.artifacts import s3config, staging
from ggufops.artifacts.dvc import S3Remote, dvc_add, dvc_key, missing_objects
from ggufops.artifacts.register import RegisterRequest, register
from ggufops.artifacts.s3server import ServerInfo
from ggufops.cli import main
from ggufops.errors import (
    BadGguf,
    BadReference,
    HeaderMismatch,
    S3AuthError,
    S3Unreachable,
    TruncatedGguf,
    UnknownParent,
    VersionExists,
)
from ggufops.procs import free_port
from ggufops.registry import validate
from ggufops.registry.registry import Registry
from testing.realmodels import SMOLLM2_SHA256
from testing.repos import git, git_commit, make_registry, make_remote
from testing.s3 import configure_s3, write_tiny_gguf


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "model.gguf", file_type=7, seed=random.randrange(1 << 30),
                           extra_bytes=300_000, chat_template="{{ messages }}")


def _leftovers(root: Path, model: str) -> list[str]:
    model_dir = root / "registry" / model
    return sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []


def test_register_tracks_pushes_and_writes_version(s3_registry: Path, gguf: Path) -> None:
    registry = Registry(s3_registry)
    result = register(registry, RegisterRequest(gguf, "tiny", "1.0.0", notes="first"))
    data = gguf.read_bytes()
    doc = yaml.safe_load(result.version_file.read_text())
    assert result.version_file == s3_registry / "registry" / "tiny" / "1.0.0.yaml"
    assert doc["quantization"] == "q8_0"
    assert result.display_id == "tiny-v1.0.0-q8_0"
    assert doc["artifact"] == {
        "file_name": "1.0.0.gguf",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "dvc_md5": hashlib.md5(data).hexdigest(),
    }
    assert doc["gguf"]["architecture"] == "llama"
    assert doc["gguf"]["context_length"] == 128
    assert doc["gguf"]["parameter_count"] == 144 + 300_000
    assert doc["gguf"]["chat_template_sha256"] == hashlib.sha256(b"{{ messages }}").hexdigest()
    assert doc["parent_version"] is None
    assert doc["base_model"] == "tiny"
    assert doc["notes"] == "first"
    eval_file = s3_registry / "registry" / "evals" / f"{doc['eval']['set']}.txt"
    assert doc["eval"]["sha256"] == hashlib.sha256(eval_file.read_bytes()).hexdigest()
    # the DVC pointer and the .gitignore entry, and the object in the remote
    pointer = yaml.safe_load((s3_registry / "registry/tiny/1.0.0.gguf.dvc").read_text())
    assert pointer["outs"][0]["md5"] == doc["artifact"]["dvc_md5"]
    assert "/1.0.0.gguf" in (s3_registry / "registry/tiny/.gitignore").read_text().splitlines()
    remote = S3Remote.from_repo(s3_registry)
    info = remote.stat(remote.key_for_md5(doc["artifact"]["dvc_md5"]))
    assert info is not None
    assert info.size == len(data)
    assert result.git_paths == ["registry/tiny/1.0.0.yaml", "registry/tiny/1.0.0.gguf.dvc",
                                "registry/tiny/.gitignore"]
    assert validate.validate_repo(s3_registry) == []
    # nothing was added to git by register itself
    assert git(s3_registry, "diff", "--cached", "--name-only") == ""
    # lineage: a child inherits base model and inference config from its parent
    child_file = write_tiny_gguf(gguf.with_name("child.gguf"), file_type=7, seed=7)
    child = register(registry, RegisterRequest(child_file, "tiny", "1.1.0", parent="1.0.0",
                                               inference={"temperature": 0.2}))
    assert child.doc["parent_version"] == "1.0.0"
    assert child.doc["inference"]["temperature"] == 0.2
    assert child.doc["inference"]["max_tokens"] == doc["inference"]["max_tokens"]


def test_cli_register_prints_display_id_and_git_commands(s3_registry: Path, gguf: Path) -> None:
    result = CliRunner().invoke(main, ["-C", str(s3_registry), "register", str(gguf),
                                       "--model", "cli-model", "--version", "0.1.0",
                                       "--quantization", "q8_0"])
    assert result.exit_code == 0, result.output
    assert "registered cli-model-v0.1.0-q8_0" in result.output
    assert ("git add registry/cli-model/0.1.0.yaml registry/cli-model/0.1.0.gguf.dvc "
            "registry/cli-model/.gitignore") in result.output
    assert 'git commit -m "register cli-model-v0.1.0-q8_0"' in result.output
    again = CliRunner().invoke(main, ["-C", str(s3_registry), "register", str(gguf),
                                      "--model", "cli-model", "--version", "0.1.0"])
    assert again.exit_code == 1
    assert "already registered" in again.output
    assert "bump the version (e.g. --version 0.1.1)" in again.output


def test_existing_version_is_refused_and_untouched(s3_registry: Path, gguf: Path) -> None:
    registry = Registry(s3_registry)
    first = register(registry, RegisterRequest(gguf, "tiny", "2.0.0"))
    before = first.version_file.read_bytes()
    other = write_tiny_gguf(gguf.with_name("other.gguf"), seed=99)
    with pytest.raises(VersionExists, match="immutable: bump the version"):
        register(registry, RegisterRequest(other, "tiny", "2.0.0"))
    assert first.version_file.read_bytes() == before
    assert (s3_registry / "registry/tiny/2.0.0.gguf").read_bytes() == gguf.read_bytes()


def test_not_a_gguf_writes_nothing(s3_registry: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "weights.safetensors"
    bogus.write_bytes(b"{\"header\": 1}" + b"\0" * 100)
    with pytest.raises(BadGguf, match="not a GGUF file"):
        register(Registry(s3_registry), RegisterRequest(bogus, "tiny", "1.0.0"))
    assert _leftovers(s3_registry, "tiny") == []


def test_truncated_gguf_writes_nothing(s3_registry: Path, gguf: Path) -> None:
    data = gguf.read_bytes()
    gguf.write_bytes(data[: len(data) - 100_000])
    with pytest.raises(TruncatedGguf) as e:
        register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0"))
    assert str(gguf) in str(e.value)
    assert _leftovers(s3_registry, "tiny") == []


def test_header_flag_mismatch(s3_registry: Path, gguf: Path) -> None:
    with pytest.raises(HeaderMismatch) as e:
        register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0",
                                                        quantization="q4_k_m"))
    assert "--quantization q4_k_m but the GGUF header says q8_0" in str(e.value)
    assert _leftovers(s3_registry, "tiny") == []


def test_missing_parent(s3_registry: Path, gguf: Path) -> None:
    with pytest.raises(UnknownParent, match=r"tiny@0\.9\.0 is not registered"):
        register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0", parent="0.9.0"))
    assert _leftovers(s3_registry, "tiny") == []


@pytest.mark.parametrize(("model", "version"), [("Bad Name", "1.0.0"), ("ok", "1.0")])
def test_bad_names(s3_registry: Path, gguf: Path, model: str, version: str) -> None:
    with pytest.raises(BadReference):
        register(Registry(s3_registry), RegisterRequest(gguf, model, version))


def test_s3_down_leaves_no_version_file(s3_registry: Path, gguf: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    s3config.update_local_config(s3_registry, "models", {"endpointurl": dead})
    with pytest.raises(S3Unreachable) as e:
        register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0"))
    assert dead in str(e.value)
    assert "ggufops s3 serve" in str(e.value)
    assert _leftovers(s3_registry, "tiny") == []  # checked before anything was written


def test_wrong_credentials_leave_no_version_file(s3_registry: Path, gguf: Path) -> None:
    s3config.update_local_config(s3_registry, "models", {"secret_access_key": "wrong"})
    with pytest.raises(S3AuthError, match="rejected the credentials"):
        register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0"))
    assert _leftovers(s3_registry, "tiny") == []


def test_rerun_after_interruption_completes(s3_registry: Path, gguf: Path) -> None:
    # as if a run was killed after `dvc add`, before the push and the version file
    target = s3_registry / "registry" / "tiny" / "1.0.0.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(gguf.read_bytes())
    dvc_add(s3_registry, target)
    assert not (s3_registry / "registry/tiny/1.0.0.yaml").exists()
    result = register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0"))
    assert result.version_file.is_file()
    remote = S3Remote.from_repo(s3_registry)
    assert remote.head(remote.key_for_md5(result.doc["artifact"]["dvc_md5"]))
    assert validate.validate_repo(s3_registry) == []


KILLING_REGISTER = """
import os, signal, sys
from pathlib import Path
from ggufops.artifacts.register import RegisterRequest, register
from ggufops.registry.registry import Registry

root, source, version, phase, after = sys.argv[1:6]

class KillAt:
    def phase(self, name, total=None):
        if name != phase:
            return None
        if int(after) == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        seen = [0]
        def advance(n):
            seen[0] += n
            if seen[0] >= int(after):
                os.kill(os.getpid(), signal.SIGKILL)
        return advance
    def close(self):
        pass

register(Registry(Path(root)), RegisterRequest(Path(source), "killed", version),
         reporter=KillAt())
"""
KILL_POINTS = [("hashing", 0), ("hashing", 1 << 20), ("uploading", 0), ("uploading", 9 << 20),
               ("tracking", 0), ("writing the version file", 0)]


@pytest.mark.slow
def test_killed_at_each_phase_never_leaves_a_version_without_its_object(
    s3_registry: Path, tmp_path: Path
) -> None:
    remote = S3Remote.from_repo(s3_registry)
    registry = Registry(s3_registry)
    for i, (phase, after) in enumerate(KILL_POINTS):
        version = f"1.0.{i}"
        # > 2 parts of 8 MiB, so a kill after 9 MiB lands inside a multipart upload
        source = write_tiny_gguf(tmp_path / f"{i}.gguf", seed=1000 + i, extra_bytes=20_000_000)
        proc = subprocess.run([sys.executable, "-c", KILLING_REGISTER, str(s3_registry),
                               str(source), version, phase, str(after)], check=False)
        assert proc.returncode == -signal.SIGKILL, (phase, after)
        assert not registry.version_file("killed", version).exists(), (phase, after)
        # running it again finishes the job, and leaves no staged copy behind
        result = register(registry, RegisterRequest(source, "killed", version))
        assert remote.stat(remote.key_for_md5(result.doc["artifact"]["dvc_md5"])).size == \
            source.stat().st_size  # type: ignore[union-attr]
        assert list((s3_registry / staging.STAGING_DIR).iterdir()) == []
    assert validate.validate_repo(s3_registry) == []
    assert sorted(p.name for p in (s3_registry / "registry" / "killed").iterdir()
                  if p.name.startswith(".") and p.name != ".gitignore") == []
    assert _dvc(s3_registry, "status", *_pointers(s3_registry, "killed")) == \
        "Data and pipelines are up to date."


def test_no_push_is_caught_by_check_artifacts(s3_registry: Path, gguf: Path) -> None:
    result = register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0", push=False))
    assert result.version_file.is_file()
    assert not result.pushed
    remote = S3Remote.from_repo(s3_registry)
    key = remote.key_for_md5(result.doc["artifact"]["dvc_md5"])
    assert not remote.head(key)
    env = s3_registry / "environments" / "staging.yaml"
    env.write_text("environment: staging\nmodels:\n  tiny:\n    version: 1.0.0\n")
    problems = validate.validate_repo(s3_registry, find_missing=missing_objects)
    assert [p.code for p in problems] == ["artifact"]
    assert "tiny@1.0.0" in problems[0].message
    assert key.split("/", 1)[1] in problems[0].message
    assert dvc_key(result.doc["artifact"]["dvc_md5"]) in problems[0].message


def test_register_a_toy_model(s3_registry: Path, tmp_path: Path) -> None:
    from ggufops.llama import toy

    path = toy.build_toy_set(tmp_path / "toys", names=["baseline-q4_k_m"])["baseline-q4_k_m"]
    result = register(Registry(s3_registry), RegisterRequest(
        path, "toy", "1.0.0", quantization="q4_k_m", base_model="toy-base"))
    assert result.display_id == "toy-v1.0.0-q4_k_m"
    assert result.doc["base_model"] == "toy-base"
    assert result.doc["artifact"]["size"] == path.stat().st_size
    assert validate.validate_repo(s3_registry) == []


# --- what DVC sees -------------------------------------------------------------------------


def _dvc(cwd: Path, *args: str) -> str:
    """Run the real DVC CLI; its stdout (stripped). Fails the test on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def _pointers(root: Path, model: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix()
                  for p in (root / "registry" / model).glob("*.gguf.dvc"))


def _dvc_add_reference(tmp_path: Path, source: Path, model: str, version: str,
                       setup: Callable[[Path], None]) -> Path:
    """A second registry where the real `dvc add` tracks the same file at the same path."""
    other = make_registry(tmp_path / "dvc-add-reference")
    setup(other)
    target = other / "registry" / model / f"{version}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    dvc_add(other, target)
    return other


def _dvc_files(root: Path, model: str, version: str) -> dict[str, bytes | None]:
    """What `dvc add` leaves: pointer, .gitignore beside it, the cache entry and its mode."""
    model_dir = root / "registry" / model
    pointer = model_dir / f"{version}.gguf.dvc"
    gitignore = model_dir / ".gitignore"
    md5 = yaml.safe_load(pointer.read_text())["outs"][0]["md5"]
    entry = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return {
        "pointer": pointer.read_bytes(),
        "gitignore": gitignore.read_bytes() if gitignore.exists() else None,
        "cache entry sha256": hashlib.sha256(entry.read_bytes()).digest(),
        "cache entry mode": oct(stat.S_IMODE(entry.stat().st_mode)).encode(),
        "workspace sha256": hashlib.sha256((model_dir / f"{version}.gguf").read_bytes()).digest(),
    }


def _no_gitignore(root: Path) -> None:
    return None


def _gitignore_without_final_newline(root: Path) -> None:
    (root / "registry" / "tiny").mkdir(parents=True, exist_ok=True)
    (root / "registry" / "tiny" / ".gitignore").write_text("/0.9.0.gguf\n*.tmp")


def _ignored_by_a_parent_rule(root: Path) -> None:
    (root / "registry" / ".gitignore").write_text("*.gguf\n")


@pytest.mark.parametrize("setup", [_no_gitignore, _gitignore_without_final_newline,
                                   _ignored_by_a_parent_rule])
def test_register_writes_what_dvc_add_writes(
    s3_registry: Path, gguf: Path, tmp_path: Path, setup: Callable[[Path], None]
) -> None:
    setup(s3_registry)
    register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0"))
    reference = _dvc_add_reference(tmp_path, gguf, "tiny", "1.0.0", setup)
    assert _dvc_files(s3_registry, "tiny", "1.0.0") == _dvc_files(reference, "tiny", "1.0.0")


@pytest.mark.slow
def test_dvc_works_on_what_register_pushed_with_the_real_model(
    s3_registry: Path, s3_server: ServerInfo, smollm2: Path, tmp_path: Path
) -> None:
    result = register(Registry(s3_registry), RegisterRequest(smollm2, "smollm2", "1.0.0"))
    assert result.doc["artifact"]["sha256"] == SMOLLM2_SHA256
    reference = _dvc_add_reference(tmp_path, smollm2, "smollm2", "1.0.0", _no_gitignore)
    assert _dvc_files(s3_registry, "smollm2", "1.0.0") == \
        _dvc_files(reference, "smollm2", "1.0.0")
    pointer = "registry/smollm2/1.0.0.gguf.dvc"
    assert _dvc(s3_registry, "status", pointer) == "Data and pipelines are up to date."
    assert _dvc(s3_registry, "status", "-c", pointer) == "Cache and remote 'models' are in sync."
    assert _dvc(s3_registry, "push", pointer) == "Everything is up to date."
    git_commit(s3_registry, "register smollm2-v1.0.0-q4_1")
    # a fresh clone: DVC finds the object in the remote and pulls it
    bare = make_remote(tmp_path, s3_registry)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    configure_s3(clone, s3_server, prefix=s3config.resolve(s3_registry).prefix)
    in_remote_only = _dvc(clone, "status", "-c", pointer).split()
    assert in_remote_only == ["deleted:", "registry/smollm2/1.0.0.gguf"]
    _dvc(clone, "pull", pointer)
    assert hashlib.sha256((clone / "registry/smollm2/1.0.0.gguf").read_bytes()).hexdigest() == \
        SMOLLM2_SHA256
    assert _dvc(clone, "status", pointer) == "Data and pipelines are up to date."
    assert _dvc(clone, "status", "-c", pointer) == "Cache and remote 'models' are in sync."


def _local_dvc_config(root: Path, text: str) -> None:
    with (root / ".dvc" / "config.local").open("a") as f:
        f.write(text)


@pytest.mark.parametrize(("cache_type", "expected"), [
    (None, "hardlink"), ("copy", "copy"), ("symlink", "symlink"), ("reflink,hardlink", "hardlink"),
])
def test_workspace_file_follows_the_cache_link_type(
    s3_registry: Path, gguf: Path, cache_type: str | None, expected: str
) -> None:
    if cache_type is not None:
        _local_dvc_config(s3_registry, f"[cache]\n    type = {cache_type}\n")
    result = register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0", push=False))
    md5 = result.doc["artifact"]["dvc_md5"]
    entry = s3_registry / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    workspace = s3_registry / "registry" / "tiny" / "1.0.0.gguf"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o444
    if expected == "hardlink":
        assert workspace.stat().st_ino == entry.stat().st_ino  # one copy on disk, read-only
    elif expected == "symlink":
        assert workspace.is_symlink()
        assert workspace.readlink() == entry
    else:
        assert workspace.stat().st_ino != entry.stat().st_ino
        assert stat.S_IMODE(workspace.stat().st_mode) == 0o666 & ~_umask()
    assert workspace.read_bytes() == gguf.read_bytes()
    assert _dvc(s3_registry, "status", "registry/tiny/1.0.0.gguf.dvc") == \
        "Data and pipelines are up to date."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cache_dir_from_dvc_config_and_dvc_push_later(
    s3_registry: Path, gguf: Path, tmp_path: Path
) -> None:
    _local_dvc_config(s3_registry, "[cache]\n    dir = ../../shared-cache\n")  # from .dvc/
    result = register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0", push=False))
    md5 = result.doc["artifact"]["dvc_md5"]
    shared = s3_registry.parent / "shared-cache"
    assert _dvc(s3_registry, "cache", "dir") == str(shared)
    assert (shared / "files" / "md5" / md5[:2] / md5[2:]).read_bytes() == gguf.read_bytes()
    assert not (s3_registry / ".dvc" / "cache").exists()
    # --no-push: DVC itself pushes from the cache register filled
    remote = S3Remote.from_repo(s3_registry)
    assert not remote.head(remote.key_for_md5(md5))
    _dvc(s3_registry, "push", "-r", "models", "registry/tiny/1.0.0.gguf.dvc")
    assert remote.head(remote.key_for_md5(md5))


class _Phases:
    """A progress.Reporter that records the phases it is told about and their bytes."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def phase(self, name: str, total: int | None = None) -> Callable[[int], None]:
        self.seen[name] = 0

        def advance(n: int) -> None:
            self.seen[name] += n

        return advance

    def close(self) -> None:
        return None


def test_same_bytes_are_uploaded_once(s3_registry: Path, gguf: Path) -> None:
    registry = Registry(s3_registry)
    size = gguf.stat().st_size
    first, second = _Phases(), _Phases()
    register(registry, RegisterRequest(gguf, "tiny", "1.0.0"), reporter=first)
    register(registry, RegisterRequest(gguf, "tiny", "1.0.1"), reporter=second)
    assert first.seen == {"hashing": size, "uploading": size, "tracking": 0,
                          "writing the version file": 0}
    assert second.seen == {"hashing": size, "tracking": 0, "writing the version file": 0}
    assert validate.validate_repo(s3_registry) == []


def test_register_the_workspace_file_in_place(s3_registry: Path, gguf: Path) -> None:
    target = s3_registry / "registry" / "tiny" / "1.0.0.gguf"
    target.parent.mkdir(parents=True)
    shutil.copyfile(gguf, target)
    result = register(Registry(s3_registry), RegisterRequest(target, "tiny", "1.0.0"))
    assert target.read_bytes() == gguf.read_bytes()
    assert result.doc["artifact"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert validate.validate_repo(s3_registry) == []


def test_staged_copies_of_dead_processes_are_removed(s3_registry: Path, gguf: Path) -> None:
    area = s3_registry / staging.STAGING_DIR
    area.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (area / f"{dead}.abc123.part").write_bytes(b"left by a killed register")
    (area / f"{os.getpid()}.def456.part").write_bytes(b"a register still running")
    register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0"))
    assert [p.name for p in area.iterdir()] == [f"{os.getpid()}.def456.part"]
    assert git(s3_registry, "status", "--porcelain", "--ignored", ".dvc/tmp") == "!! .dvc/tmp/"


def _read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return
        if not data:
            return
        into.append(data)


def _register_on_a_terminal(root: Path, source: Path, version: str,
                            *extra: str, env: dict[str, str] | None = None) -> str:
    """`ggufops register` with stderr on a pseudo-terminal; what the terminal showed."""
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ggufops"), "-C", str(root),
                             "register", str(source), "--model", "tiny", "--version", version,
                             *extra], stdout=subprocess.DEVNULL, stderr=child_fd,
                            env={**os.environ, **(env or {})})
    os.close(child_fd)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(main_fd, chunks))
    reader.start()
    assert proc.wait() == 0
    reader.join()
    os.close(main_fd)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_bar_on_a_terminal_only(s3_registry: Path, tmp_path: Path) -> None:
    from tqdm import tqdm

    source = write_tiny_gguf(tmp_path / "big.gguf", seed=3, extra_bytes=20_000_000)
    total = tqdm.format_sizeof(source.stat().st_size, divisor=1024)
    env = {"CI": ""}
    shown = _register_on_a_terminal(s3_registry, source, "1.0.0", env=env)
    for phase in ("hashing", "uploading"):
        assert re.search(rf"tiny@1\.0\.0: {phase}: +\d+%\|.*\| [\d.]+[kMG]?B?/{total}B? "
                         r"\[\d\d:\d\d<(\d\d:\d\d|\?)", shown), (phase, shown)
    quiet = _register_on_a_terminal(s3_registry, source, "1.0.1", env={"CI": "true"})
    # no bars in CI; the one line left is the load-check warning (a header-only GGUF)
    assert [ln for ln in quiet.splitlines() if not ln.startswith("warning: ")] == []
    assert _register_on_a_terminal(s3_registry, source, "1.0.2", "--json", env=env) == ""


def _file_size_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_disk_full_while_copying_leaves_nothing(s3_registry: Path, tmp_path: Path) -> None:
    source = write_tiny_gguf(tmp_path / "big.gguf", seed=4, extra_bytes=12_000_000)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ggufops"), "-C", str(s3_registry), "register",
         str(source), "--model", "tiny", "--version", "1.0.0"],
        capture_output=True, text=True, preexec_fn=_file_size_limit(5_000_000), check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: writing a copy of the model to ")
    assert "free disk space (or raise the file size limit) and register again" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _leftovers(s3_registry, "tiny") == []
    assert list((s3_registry / staging.STAGING_DIR).iterdir()) == []


def test_copy_hashing_hashes_what_it_writes(tmp_path: Path) -> None:
    data = random.Random(9).randbytes(staging.CHUNK * 3 + 17)
    source, dest = tmp_path / "src", tmp_path / "dest"
    source.write_bytes(data)
    seen: list[int] = []
    digest = staging.copy_hashing(source, dest, seen.append)
    assert digest == staging.Digest(hashlib.sha256(data).hexdigest(),
                                    hashlib.md5(data).hexdigest(), len(data))
    assert dest.read_bytes() == data
    assert seen == [staging.CHUNK] * 3 + [17]
