"""`register` on a real git repo, real DVC and the real SeaweedFS."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ggufops import s3config, validate
from ggufops.artifacts import S3Remote, dvc_add, dvc_key
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
from ggufops.register import RegisterRequest, register
from ggufops.registry import Registry
from testing.repos import git
from testing.s3 import write_tiny_gguf


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
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
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


@pytest.mark.slow
def test_killed_at_any_point_never_leaves_a_version_without_its_object(
    s3_registry: Path, gguf: Path
) -> None:
    exe = str(Path(sys.executable).parent / "ggufops")
    remote = S3Remote.from_repo(s3_registry)
    outcomes = []
    for i, delay in enumerate((0.2, 0.6, 1.0, 1.4, 1.8, 2.2, 2.6, 3.5)):
        version = f"1.0.{i}"
        source = write_tiny_gguf(gguf.with_name(f"{i}.gguf"), seed=1000 + i, extra_bytes=50_000)
        proc = subprocess.Popen([exe, "-C", str(s3_registry), "register", str(source),
                                 "--model", "killed", "--version", version],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        yaml_path = s3_registry / "registry" / "killed" / f"{version}.yaml"
        if yaml_path.exists():
            doc = yaml.safe_load(yaml_path.read_text())
            assert remote.head(remote.key_for_md5(doc["artifact"]["dvc_md5"])), version
            outcomes.append("registered")
        else:
            outcomes.append("nothing")
    assert "nothing" in outcomes  # the kills did land mid-way
    assert validate.validate_repo(s3_registry) == []


def test_no_push_is_caught_by_check_artifacts(s3_registry: Path, gguf: Path) -> None:
    result = register(Registry(s3_registry), RegisterRequest(gguf, "tiny", "1.0.0", push=False))
    assert result.version_file.is_file()
    assert not result.pushed
    remote = S3Remote.from_repo(s3_registry)
    key = remote.key_for_md5(result.doc["artifact"]["dvc_md5"])
    assert not remote.head(key)
    env = s3_registry / "environments" / "staging.yaml"
    env.write_text("environment: staging\nmodels:\n  tiny:\n    version: 1.0.0\n")
    problems = validate.validate_repo(s3_registry, check_artifacts=True)
    assert [p.code for p in problems] == ["artifact"]
    assert "tiny@1.0.0" in problems[0].message
    assert key.split("/", 1)[1] in problems[0].message
    assert dvc_key(result.doc["artifact"]["dvc_md5"]) in problems[0].message


def test_register_a_toy_model(s3_registry: Path, tmp_path: Path) -> None:
    from ggufops import toy

    path = toy.build_toy_set(tmp_path / "toys", names=["baseline-q4_k_m"])["baseline-q4_k_m"]
    result = register(Registry(s3_registry), RegisterRequest(
        path, "toy", "1.0.0", quantization="q4_k_m", base_model="toy-base"))
    assert result.display_id == "toy-v1.0.0-q4_k_m"
    assert result.doc["base_model"] == "toy-base"
    assert result.doc["artifact"]["size"] == path.stat().st_size
    assert validate.validate_repo(s3_registry) == []
