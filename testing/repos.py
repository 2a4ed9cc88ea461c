"""Real git repositories for tests: a registry checkout and a bare remote."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ggufops.hashing import file_sha256
from ggufops.registry.template import copy_template, project_root

GIT_TEST_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.invalid",
    "GIT_ALLOW_PROTOCOL": "file",
    "GIT_CONFIG_NOSYSTEM": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "DVC_NO_ANALYTICS": "1",
}


def line_of(path: Path, match: str | Callable[[str], bool]) -> int:
    """The 1-based number of the first line of `path` containing `match` (or for which
    it is true): where a file:line error should point."""
    test = match if callable(match) else (lambda text: match in text)
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if test(text))


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def git_commit(cwd: Path, message: str = "commit", *paths: str) -> str:
    git(cwd, "add", "-A", *paths)
    git(cwd, "commit", "-q", "--allow-empty", "-m", message)
    return git(cwd, "rev-parse", "HEAD")


def make_registry(path: Path) -> Path:
    """A git repo holding the ggufops template, committed on `main`."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    copy_template(project_root(), path)
    git_commit(path, "registry template")
    return path


def make_remote(tmp: Path, registry: Path) -> Path:
    """A bare repository as `origin` of `registry`, with main pushed."""
    bare = tmp / "remote.git"
    git(tmp, "init", "-q", "--bare", "-b", "main", str(bare))
    git(registry, "remote", "add", "origin", str(bare))
    git(registry, "push", "-q", "-u", "origin", "main")
    return bare


EVAL_SET = "pydoc-heldout-v1"


def version_doc(name: str, version: str, *, root: Path, parent: str | None = None,
                quantization: str = "q8_0", content: bytes | None = None) -> dict[str, Any]:
    """A valid version document for a fake artifact `content` (for tests that need no S3)."""
    data = content if content is not None else f"{name}@{version}".encode()
    eval_path = root / "registry" / "evals" / f"{EVAL_SET}.txt"
    return {
        "name": name,
        "version": version,
        "base_model": name,
        "quantization": quantization,
        "parent_version": parent,
        "created_at": "2026-11-21T12:00:00Z",
        "artifact": {
            "file_name": f"{version}.gguf",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "dvc_md5": hashlib.md5(data).hexdigest(),
        },
        "gguf": {
            "architecture": "llama",
            "parameter_count": 123456,
            "context_length": 256,
            "tokenizer_sha256": hashlib.sha256(b"tokenizer").hexdigest(),
            "chat_template_sha256": None,
        },
        "inference": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 128,
                      "prompt_template": "chatml"},
        "eval": {"set": EVAL_SET, "sha256": file_sha256(eval_path)},
    }


def write_version(root: Path, name: str, version: str, **kwargs: Any) -> Path:
    """Write a version file and its DVC pointer (no real artifact) into `root`."""
    doc = version_doc(name, version, root=root, **kwargs)
    model_dir = root / "registry" / name
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / f"{version}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    pointer = {"outs": [{"md5": doc["artifact"]["dvc_md5"], "size": doc["artifact"]["size"],
                         "hash": "md5", "path": doc["artifact"]["file_name"]}]}
    (model_dir / f"{version}.gguf.dvc").write_text(yaml.safe_dump(pointer, sort_keys=False))
    return path


def set_environment(root: Path, env: str, models: dict[str, str]) -> Path:
    path = root / "environments" / f"{env}.yaml"
    body = {"environment": env, "models": {m: {"version": v} for m, v in models.items()}}
    path.write_text(f"# {env}\n" + yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(autouse=True, scope="session")
def _git_test_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n[protocol \"file\"]\n"
                                     "\tallow = always\n")
    old = dict(os.environ)
    os.environ.update({**GIT_TEST_ENV, "HOME": str(home),
                       "GIT_CONFIG_GLOBAL": str(home / ".gitconfig")})
    yield
    os.environ.clear()
    os.environ.update(old)


@pytest.fixture
def registry_repo(tmp_path: Path) -> Path:
    """An empty registry (the template) in a fresh git repo on main."""
    return make_registry(tmp_path / "registry")


@pytest.fixture
def registry_with_remote(tmp_path: Path) -> tuple[Path, Path]:
    """(checkout, bare remote) with the template pushed to origin/main."""
    repo = make_registry(tmp_path / "registry")
    return repo, make_remote(tmp_path, repo)
