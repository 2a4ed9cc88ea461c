"""Does the installed llama-cpp-python load a GGUF? `register` asks before it writes anything.

The answer becomes the version's `requires.validated_with` (registry/compat.py). The file is
loaded in process with a tiny context (weights are memory-mapped, so this reads little);
llama.cpp reports a file it cannot load as an error, which is returned as the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ggufops.errors import LlamaError

DISTRIBUTION = "llama_cpp_python"
LOAD_CONTEXT = 16  # tokens: enough to build a context, nothing to evaluate


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
    """Load `path` with the installed runtime and free it again."""
    runtime = installed_version()
    if runtime is None:
        return LoadCheck(None, False, "llama-cpp-python is not installed (the [llama] extra)")
    try:
        from ggufops.llama import llm  # numpy and llama.cpp load only when a file is checked
    except ImportError as e:  # a broken or partial [llama] install: no check, say why
        return LoadCheck(None, False, f"llama-cpp-python cannot be imported ({e})")
    try:
        with llm.load(path, n_ctx=LOAD_CONTEXT, n_threads=1):
            return LoadCheck(runtime, True, None)
    except LlamaError as e:
        return LoadCheck(runtime, False, str(e))
