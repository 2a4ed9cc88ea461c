"""register's load check runs in a child process: a GGUF on which llama.cpp aborts ends
that child, not register, and nothing is registered; real llama.cpp, SeaweedFS and toys."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from click.testing import CliRunner
from gguf import GGUFReader

from ggufops.cli import main
from ggufops.llama import loadcheck


def with_field(source: Path, out: Path, key: str, value: int) -> Path:
    """A copy of `source` whose integer metadata `key` says `value` (same size, same tensors)."""
    shutil.copy(source, out)
    reader = GGUFReader(out, "r+")
    field = reader.fields[key]
    field.parts[field.data[0]][...] = value
    reader.data.flush()
    del reader
    return out


def aborting_gguf(toy: Path, tmp_path: Path) -> Path:
    """llama.cpp 0.3.36 aborts (SIGABRT, inside llama_model_load) on a llama GGUF whose
    block_count is 0 while its blocks' tensors are there: a corrupt file that every header
    check passes."""
    return with_field(toy, tmp_path / "aborts.gguf", "llama.block_count", 0)


def register_cli(root: Path, source: Path, model: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--repo", str(root), "register", str(source),
                                       "--model", model, "--version", "1.0.0"])
    return result.exit_code, result.output


def written(root: Path, model: str) -> list[str]:
    model_dir = root / "registry" / model
    return sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []


def test_llama_cpp_aborting_on_the_file_is_a_clean_error_and_nothing_is_registered(
        s3_registry: Path, toy_models: dict[str, Path], tmp_path: Path) -> None:
    bad = aborting_gguf(toy_models["baseline"], tmp_path)
    code, output = register_cli(s3_registry, bad, "bad")
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"error: {bad}: llama.cpp (llama-cpp-python "
                               f"{loadcheck.installed_version()}) crashed with SIGABRT")
    assert "nothing was registered" in lines[0]
    assert written(s3_registry, "bad") == []  # no version file, no .gguf.dvc, no .gguf
    # ...and the good file it was made from registers
    code, output = register_cli(s3_registry, toy_models["baseline"], "good")
    assert code == 0, output
    assert written(s3_registry, "good") == [".gitignore", "1.0.0.gguf", "1.0.0.gguf.dvc",
                                            "1.0.0.yaml"]


def test_truncated_tensor_data_is_refused_before_any_load(
        s3_registry: Path, toy_models: dict[str, Path], tmp_path: Path) -> None:
    data = toy_models["baseline"].read_bytes()
    short = tmp_path / "short.gguf"
    short.write_bytes(data[: len(data) // 2])
    code, output = register_cli(s3_registry, short, "short")
    assert code == 1
    assert output.startswith(f"error: {short}: truncated GGUF: tensor ")
    assert written(s3_registry, "short") == []


def test_the_load_check_leaves_llama_cpp_out_of_the_registering_process(
        toy_models: dict[str, Path]) -> None:
    probe = ("import sys; from pathlib import Path; from ggufops.llama import loadcheck; "
             f"c = loadcheck.check_loads(Path({str(toy_models['baseline'])!r})); "
             "print(c.loaded, 'llama_cpp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "False"]


def test_a_crashing_load_check_leaves_no_core_file(toy_models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """Even where core dumps are on (the soft limit raised here), the child that aborts on
    the file writes none into its working directory, the registry."""
    bad = aborting_gguf(toy_models["baseline"], tmp_path)
    work = tmp_path / "registry"
    work.mkdir()
    probe = ("import resource; from pathlib import Path; from ggufops.llama import loadcheck; "
             "resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, "
             "resource.RLIM_INFINITY)); "
             f"loadcheck.check_loads(Path({str(bad)!r}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=work, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 1 and "crashed with SIGABRT" in done.stderr
    assert list(work.iterdir()) == []


def test_a_checker_started_by_a_thread_that_ended_still_answers(
        toy_models: dict[str, Path]) -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* exits: a child started from a
    worker thread must not get it, or the next check would read a SIGTERM as a crash."""
    runtime = loadcheck.installed_version()
    assert runtime is not None
    checker = loadcheck.Checker(runtime)
    try:
        first: list[loadcheck.LoadCheck] = []
        worker = threading.Thread(target=lambda: first.append(checker.check(
            toy_models["baseline"])))
        worker.start()
        worker.join()
        assert first[0].loaded, first
        time.sleep(0.5)  # a death signal, had it been set, is delivered by now
        assert checker.check(toy_models["baseline"]).loaded  # the same child, alive
    finally:
        checker.close()


def test_a_child_that_ends_without_an_answer_is_not_called_a_corrupt_file() -> None:
    checker = loadcheck.Checker("0.3.36")
    ended = checker._death(3, timed_out=False)
    assert ended == ("the load check child with llama-cpp-python 0.3.36 ended without an "
                     "answer (exit 3: no output); fix what that says and run register again")
    assert "corrupt" in checker._death(-6, timed_out=False)  # a crash on the file is
    assert "run register again" in checker._death(0, timed_out=True)
