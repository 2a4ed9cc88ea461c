"""Scratch registries for the gitops tests: a registry with a bare remote (and S3), and
helpers that run the CLI and ship versions through environments."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from testing.repos import git, git_commit, make_registry, make_remote, write_version

MODEL = "llama3-instruct"
OTHER = "phi-mini"
VERSIONS = ("1.0.0", "2.0.0", "2.1.0", "3.0.0")


# --- scratch registry ---------------------------------------------------------------------

@dataclass
class Scratch:
    """A registry checkout on main whose `origin` is a local bare repository."""

    root: Path
    remote: Path
    tmp: Path

    def register(self, name: str, version: str, *, parent: str | None = None,
                 metrics: dict[str, float] | None = None, push: bool = True) -> str:
        path = write_version(self.root, name, version, parent=parent)
        if metrics is not None:
            add_metrics(path, metrics)
        sha = git_commit(self.root, f"register {name}@{version}")
        if push:
            git(self.root, "push", "-q", "origin", "main")
        return sha

    def head(self, ref: str = "main", where: Path | None = None) -> str:
        return git(where or self.root, "rev-parse", ref)

    def remote_head(self) -> str:
        return git(self.remote, "rev-parse", "main")

    def clone(self, name: str) -> Path:
        dest = self.tmp / name
        git(self.tmp, "clone", "-q", str(self.remote), str(dest))
        return dest

    def env_text(self, env: str, ref: str = "main", where: Path | None = None) -> str:
        return git(where or self.root, "show", f"{ref}:environments/{env}.yaml") + "\n"

    def running(self, env: str, ref: str = "main", where: Path | None = None) -> dict[str, str]:
        data = yaml.safe_load(self.env_text(env, ref, where)) or {}
        return {m: str(e["version"]) for m, e in (data.get("models") or {}).items()}

    def canaries(self, env: str, ref: str = "main") -> dict[str, dict[str, Any]]:
        """model -> its `canary:` block ({version, weight}), for models that have one."""
        data = yaml.safe_load(self.env_text(env, ref)) or {}
        return {m: e["canary"] for m, e in (data.get("models") or {}).items() if "canary" in e}


def add_metrics(path: Path, metrics: dict[str, float]) -> None:
    """Record gate results in a version file, as `ggufops bench --record` would."""
    doc = yaml.safe_load(path.read_text())
    doc["benchmarks"] = {"eval_sha256": doc["eval"]["sha256"], "llama_cpp_python": "0.3.36",
                         "metrics": metrics}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def make_scratch(tmp: Path) -> Scratch:
    """Template registry + llama3-instruct 1.0.0..3.0.0 and phi-mini 1.0.0, pushed."""
    root = make_registry(tmp / "registry")
    for i, version in enumerate(VERSIONS):
        path = write_version(root, MODEL, version, parent=VERSIONS[i - 1] if i else None)
        add_metrics(path, {"perplexity": 6.0 - i / 2, "tg_tokens_per_s": 100.0 + i})
    write_version(root, OTHER, "1.0.0")
    production = root / "environments" / "production.yaml"
    production.write_text(production.read_text().replace(
        "models: {}", "models: {}  # model -> the version serving traffic"))
    git_commit(root, "register models")
    remote = make_remote(tmp, root)
    git(root, "branch", "-q", "--set-upstream-to=origin/main", "main")
    return Scratch(root, remote, tmp)


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    return make_scratch(tmp_path)


@dataclass
class ScratchS3(Scratch):
    """A scratch registry whose DVC remote is a fresh prefix on the session's SeaweedFS."""

    s3: Any = None  # ggufops.artifacts.s3server.ServerInfo
    prefix: str = ""

    def clone(self, name: str) -> Path:
        """A colleague's clone, its DVC remote pointed at the same S3 prefix."""
        from testing.s3 import configure_s3

        dest = super().clone(name)
        configure_s3(dest, self.s3, prefix=self.prefix)
        return dest

    def object_key(self, name: str, version: str) -> str:
        md5 = hashlib.md5(f"{name}@{version}".encode()).hexdigest()
        return f"{self.prefix}/files/md5/{md5[:2]}/{md5[2:]}"

    def upload(self, name: str, version: str) -> None:
        """Put the artifact write_version describes (its default content) into S3."""
        from testing.s3 import s3_client

        s3_client(self.s3).put_object(Bucket=self.s3.bucket,  # type: ignore[attr-defined]
                                      Key=self.object_key(name, version),
                                      Body=f"{name}@{version}".encode())

    def delete(self, name: str, version: str) -> None:
        from testing.s3 import s3_client

        s3_client(self.s3).delete_object(Bucket=self.s3.bucket,  # type: ignore[attr-defined]
                                         Key=self.object_key(name, version))


@pytest.fixture
def scratch_s3(tmp_path: Path, s3_server: Any) -> ScratchS3:
    """`scratch` with every registered version's artifact in a real S3 (SeaweedFS)."""
    from testing.s3 import configure_s3

    base = make_scratch(tmp_path)
    prefix = f"gitops-{uuid.uuid4().hex[:12]}"
    configure_s3(base.root, s3_server, prefix=prefix)
    scratch = ScratchS3(base.root, base.remote, base.tmp, s3_server, prefix)
    for version in VERSIONS:
        scratch.upload(MODEL, version)
    scratch.upload(OTHER, "1.0.0")
    return scratch


def cli(root: Path, *args: str) -> Result:
    """Run `ggufops -C root ARGS` in-process; stdout and stderr kept apart."""
    from ggufops.cli import main

    return CliRunner().invoke(main, ["-C", str(root), *args], catch_exceptions=False)


def ship(root: Path, ref: str, *envs: str) -> None:
    """Deploy `ref` straight to each env in turn (committed on main and pushed)."""
    for env in envs or ("staging", "production"):
        result = cli(root, "deploy", ref, "--env", env, "--direct", "--push")
        assert result.exit_code == 0, result.output + result.stderr


def ship_canary(root: Path, ref: str, env: str, weight: int) -> None:
    """Start or ramp a canary of `ref` in `env` (committed on main and pushed)."""
    result = cli(root, "deploy", ref, "--env", env, "--canary", str(weight), "--direct",
                 "--push")
    assert result.exit_code == 0, result.output + result.stderr
