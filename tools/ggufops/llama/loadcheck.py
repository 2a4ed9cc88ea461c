"""Does the installed llama-cpp-python load a GGUF? `register` asks before it writes anything.

The answer becomes the version's `requires.validated_with` (registry/compat.py). The file is
loaded in a child process (loadchild.py: a tiny context, weights memory-mapped, so this reads
little), so a llama.cpp crash or abort on a bad file cannot take `register` down with it, and
register itself never imports numpy or llama.cpp. One child answers every check of a
process, so a caller that registers many files pays its start (the numpy and llama.cpp
imports, about a second) once; a child that died is started again for the next check.

llama.cpp refusing the file is an answer (`loaded` false, with its reason); the child dying
by a signal, hanging, or ending without an answer is `LoadCheckFailed`, and register writes
nothing.
"""

from __future__ import annotations

import atexit
import functools
import resource
import signal
import sys
import threading
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


@functools.cache
def installed_version() -> str | None:
    """The installed llama-cpp-python's version; None when the [llama] extra is absent.
    Read once: each metadata lookup scans sys.path, and the runtime a process loaded does
    not change under it."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


class Checker:
    """The child that loads files for us (a procs.LineChild); thread-safe."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()
        self._child: procs.LineChild | None = None

    def check(self, path: Path) -> LoadCheck:
        with self._lock:
            child = self._running()
            try:
                child.send({"path": str(path)})
            except BrokenPipeError:  # it died while idle, between two polls: start another
                self._forget()
                child = self._running()
                child.send({"path": str(path)})
            return self._answer(path, child)

    def _running(self) -> procs.LineChild:
        if self._child is None or not self._child.running():
            self._forget()
            # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so only a
            # child forked by the main thread (which lives as long as we do) gets it; one
            # forked by another thread ends when its stdin closes (loadchild reads to EOF).
            setup = _child_setup if threading.current_thread() is threading.main_thread() \
                else _no_core_file
            self._child = procs.LineChild([sys.executable, "-m", CHILD_MODULE, self.runtime],
                                          preexec=setup)
        return self._child

    def _answer(self, path: Path, child: procs.LineChild) -> LoadCheck:
        try:
            answer = child.receive(TIMEOUT_S)
        except TimeoutError:
            answer, timed_out = None, True
        else:
            timed_out = False
        if answer is not None:
            return LoadCheck(answer.get("runtime"), bool(answer["loaded"]),
                             answer.get("reason"))
        said = self._death(child.kill() if timed_out else child.wait(), timed_out=timed_out,
                           last_error=child.last_error_line() or "no output")
        self._forget()
        raise LoadCheckFailed(f"{path}: {said}; nothing was registered")

    def _death(self, returncode: int, *, timed_out: bool, last_error: str = "no output"
               ) -> str:
        """How the child ended, in words."""
        runtime = f"llama-cpp-python {self.runtime}"
        if timed_out:
            return (f"{runtime} did not finish loading it in {TIMEOUT_S:.0f} s (a slow disk or "
                    "a busy machine? run register again; a file llama.cpp hangs on is corrupt)")
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            return (f"llama.cpp ({runtime}) crashed with {name} while loading it: the file is "
                    "corrupt or needs another llama.cpp; convert or download it again")
        return (f"the load check child with {runtime} ended without an answer (exit "
                f"{returncode}: {last_error}); fix what that says and run register again")

    def _forget(self) -> None:
        """Let go of a finished (or dead) child and its stderr file."""
        if self._child is not None:
            self._child.close()
        self._child = None

    def close(self) -> None:
        with self._lock:
            self._forget()


def _no_core_file() -> None:
    """In the child before it runs: a crash on a bad file leaves no core file behind (in
    the registry, its working directory)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child_setup() -> None:
    """_no_core_file, and the child dies with us."""
    _no_core_file()
    die_with_parent = procs.die_with_parent()
    if die_with_parent is not None:
        die_with_parent()


_CHECKERS: dict[str, Checker] = {}


@atexit.register
def _close_all() -> None:
    for checker in _CHECKERS.values():
        checker.close()


def check_loads(path: Path) -> LoadCheck:
    """Load `path` with the installed runtime, in the child process; LoadCheckFailed when
    the child crashes, hangs or ends without an answer."""
    runtime = installed_version()
    if runtime is None:
        return LoadCheck(None, False, "llama-cpp-python is not installed (the [llama] extra)")
    checker = _CHECKERS.setdefault(runtime, Checker(runtime))
    return checker.check(path)
