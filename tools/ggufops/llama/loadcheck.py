"""Does the installed llama-cpp-python load a GGUF? `register` asks before it writes anything.

The answer becomes the version's `requires.validated_with` (registry/compat.py). The file is
loaded in a child process (loadchild.py: a tiny context, weights memory-mapped, so this reads
little), so a llama.cpp crash or abort on a bad file cannot take `register` down with it, and
register itself never imports numpy or llama.cpp. llama.cpp refusing the file is an answer
(`loaded` false, with its reason); the child dying by a signal, or failing without an answer,
is `LoadCheckFailed`, and register writes nothing.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ggufops import procs
from ggufops.errors import LoadCheckFailed

DISTRIBUTION = "llama_cpp_python"
CHILD_MODULE = "ggufops.llama.loadchild"
TIMEOUT_S = 600.0  # a memory-mapped load of a large model on a busy host, with room to spare


@dataclass(frozen=True)
class LoadCheck:
    runtime: str | None  # the installed llama-cpp-python, None without the [llama] extra
    loaded: bool
    reason: str | None  # why it did not load (or was not tried)


def installed_version() -> str | None:
    """The installed llama-cpp-python's version; None when the [llama] extra is absent."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def check_loads(path: Path) -> LoadCheck:
    """Load `path` with the installed runtime, in a child process; LoadCheckFailed when the
    child crashes, hangs or ends without an answer."""
    runtime = installed_version()
    if runtime is None:
        return LoadCheck(None, False, "llama-cpp-python is not installed (the [llama] extra)")
    try:
        child = procs.run_python(["-m", CHILD_MODULE, str(path), runtime], timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LoadCheckFailed(
            f"{path}: llama-cpp-python {runtime} did not finish loading it in "
            f"{TIMEOUT_S:.0f} s; nothing was registered: check the file with llama.cpp"
        ) from None
    return _answer(path, runtime, child)


def _answer(path: Path, runtime: str, child: procs.ChildResult) -> LoadCheck:
    answer = child.last_json() if child.returncode == 0 else None
    if isinstance(answer, dict) and isinstance(answer.get("loaded"), bool):
        return LoadCheck(answer.get("runtime"), answer["loaded"], answer.get("reason"))
    raise LoadCheckFailed(f"{path}: {_death(runtime, child)}; nothing was registered: the "
                          "file is corrupt or needs another llama.cpp: convert or download "
                          "it again")


def _death(runtime: str, child: procs.ChildResult) -> str:
    """How the child ended, in words: the signal that killed it, or its exit code and last
    error line."""
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        return f"llama.cpp (llama-cpp-python {runtime}) crashed with {name} while loading it"
    said = child.last_error_line() or "no output"
    return (f"the load check with llama-cpp-python {runtime} failed (exit {child.returncode}: "
            f"{said})")
