"""GitOps at scale: `rollback --push` and `history` on a registry with a long history.

Builds (with one `git fast-import`, not thousands of `git commit` processes) a registry
of 1,000 versions (10 models x 100) and 5,000 past deploys to production, pushes it to a
local bare remote, then measures:

- rollback --push, the whole command as a person runs it (a `ggufops` process), from
  start to the pushed commit: with the artifact check against a real SeaweedFS, and
  without it (--skip-artifact-check) to show the git part alone; plus the in-process API;
- history over the 5,000 deploy commits: time and commits/second (goal: under 2 s);
- gitpython against the git CLI path (ggufops.git) on the two reads the git room does in
  bulk (a file's history, a tree's files), as ratios measured in the same run: the data
  behind removing gitpython from the dependencies (docs/benchmarks.md).

Prints figures; it is not a pass/fail test. Run: .venv/bin/python -m bench.bench_gitops
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ggufops.gitops import history, rollback
from ggufops.registry.template import copy_template, project_root
from testing.repos import GIT_TEST_ENV, version_doc

ROOT = Path(__file__).resolve().parents[1]

MODELS = 10
VERSIONS_PER_MODEL = 100
ENV = "production"


def git(cwd: Path, *args: str, stdin: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {proc.stderr.decode()}")
    return proc.stdout.decode().strip()


def versions() -> list[str]:
    return [f"1.{i // 10}.{i % 10}" for i in range(VERSIONS_PER_MODEL)]


def model(i: int) -> str:
    return f"model-{i:02d}"


def blob(data: bytes) -> bytes:
    return b"data %d\n" % len(data) + data + b"\n"


def commit(message: str, when: int, files: dict[str, bytes]) -> bytes:
    who = b"Bench Bot <bench@example.invalid> %d +0000\n" % when
    out = b"commit refs/heads/main\nauthor " + who + b"committer " + who
    out += blob(message.encode())
    for path, content in files.items():
        out += f"M 100644 inline {path}\n".encode() + blob(content)
    return out


def env_text(running: dict[str, str]) -> bytes:
    lines = [f"# Which version of each model runs in {ENV}.", f"environment: {ENV}", "models:"]
    for name, version in running.items():
        lines += [f"  {name}:", f"    version: {version}"]
    return ("\n".join(lines) + "\n").encode()


def version_files(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for m in range(MODELS):
        for n, version in enumerate(versions()):
            content = f"{model(m)}@{version}".encode()
            doc = version_doc(model(m), version, root=root, content=content)
            doc["benchmarks"] = {"eval_sha256": doc["eval"]["sha256"],
                                 "metrics": {"perplexity": 6.0 - n / 100,
                                             "tg_tokens_per_s": 100.0 + n}}
            base = f"registry/{model(m)}/{version}"
            files[f"{base}.yaml"] = yaml.safe_dump(doc, sort_keys=False).encode()
            pointer = {"outs": [{"md5": doc["artifact"]["dvc_md5"], "size": len(content),
                                 "hash": "md5", "path": f"{version}.gguf"}]}
            files[f"{base}.gguf.dvc"] = yaml.safe_dump(pointer, sort_keys=False).encode()
    return files


def build(root: Path, deploys: int) -> float:
    """The registry with `deploys` deploy commits; returns seconds taken."""
    started = time.perf_counter()
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    copy_template(project_root(), root)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "registry template")
    when = 1_700_000_000
    stream = [b"reset refs/heads/main\nfrom refs/heads/main^0\n\n",
              commit("register 1,000 versions", when, version_files(root))]
    running: dict[str, str] = {}
    all_versions = versions()
    for i in range(deploys):
        name = model(i % MODELS)
        new = all_versions[(i // MODELS) % VERSIONS_PER_MODEL]
        old = running.get(name)
        if old == new:
            new = all_versions[((i // MODELS) + 1) % VERSIONS_PER_MODEL]
        running[name] = new
        message = history.format_message(history.DEPLOY, ENV, name, old, new)
        stream.append(commit(message, when + 60 * (i + 1),
                             {f"environments/{ENV}.yaml": env_text(running)}))
    git(root, "fast-import", "--quiet", stdin=b"".join(stream))
    git(root, "reset", "-q", "--hard", "main")
    return time.perf_counter() - started


def start_s3(root: Path, tmp: Path, target: tuple[str, str]) -> object | None:
    """A SeaweedFS holding the rollback target's artifact; None if it cannot start."""
    try:
        import boto3

        from ggufops.artifacts.s3server import S3Server
        from testing.s3 import configure_s3
    except ImportError as e:
        print(f"  (no S3 benchmark: {e})")
        return None
    server = S3Server(tmp / "s3")
    server.__enter__()
    info = server.info()
    configure_s3(root, info, prefix="bench")
    md5 = hashlib.md5(f"{target[0]}@{target[1]}".encode()).hexdigest()
    boto3.client("s3", endpoint_url=info.endpoint, aws_access_key_id=info.access_key_id,
                 aws_secret_access_key=info.secret_access_key, region_name="us-east-1",
                 ).put_object(Bucket=info.bucket, Key=f"bench/files/md5/{md5[:2]}/{md5[2:]}",
                              Body=f"{target[0]}@{target[1]}".encode())
    return server


def time_cli(root: Path, *args: str) -> float:
    ggufops = Path(sys.executable).parent / "ggufops"
    started = time.perf_counter()
    proc = subprocess.run([str(ggufops), "-C", str(root), *args], capture_output=True,
                          text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"ggufops {' '.join(args)} failed: {proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=5000)
    args = parser.parse_args()
    os.environ.update({k: v for k, v in GIT_TEST_ENV.items() if k != "GIT_ALLOW_PROTOCOL"})
    with tempfile.TemporaryDirectory(prefix="bench-gitops-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "registry"
        built = build(root, args.deploys)
        commits = int(git(root, "rev-list", "--count", "main"))
        print(f"registry: {MODELS * VERSIONS_PER_MODEL} versions, {args.deploys} deploys to "
              f"{ENV}, {commits} commits; built with git fast-import in {built:.2f} s")
        git(tmp, "init", "-q", "--bare", "-b", "main", str(tmp / "remote.git"))
        git(root, "remote", "add", "origin", str(tmp / "remote.git"))
        git(root, "push", "-q", "-u", "origin", "main")

        bench_history(root, args.deploys)
        bench_gitpython(root)
        bench_rollback(root, tmp)


def bench_history(root: Path, deploys: int) -> None:
    started = time.perf_counter()
    rows = history.read_history(root, ENV, "main")
    api = time.perf_counter() - started
    print(f"history (API):  {len(rows)} deploys in {api:.3f} s = {deploys / api:,.0f} "
          "commits/s (goal: < 2 s)")
    cli = time_cli(root, "history", "--env", ENV, "--json")
    print(f"history (CLI, whole process, --json): {cli:.3f} s = {deploys / cli:,.0f} "
          "commits/s")
    sqlite = time_cli(root, "history", "--env", ENV, "--sqlite", str(root.parent / "h.db"))
    print(f"history (CLI, --sqlite): {sqlite:.3f} s")


def bench_rollback(root: Path, tmp: Path) -> None:
    plan = rollback.plan_rollback(root, rollback.RollbackRequest(
        env=ENV, mode=rollback.PUSH, skip_artifact_check=True))
    git_only = time_cli(root, "rollback", "--env", ENV, "--push", "--skip-artifact-check")
    print(f"rollback --push --skip-artifact-check (CLI, whole process): {git_only:.3f} s "
          f"({plan.model} {plan.from_version} -> {plan.to_version})")

    started = time.perf_counter()
    outcome = rollback.rollback(root, rollback.RollbackRequest(
        env=ENV, mode=rollback.PUSH, skip_artifact_check=True))
    api = time.perf_counter() - started
    print(f"rollback --push (API, no artifact check): {api:.3f} s "
          f"({outcome.plan.model} {outcome.plan.from_version} -> {outcome.plan.to_version})")

    server = start_s3(root, tmp, (outcome.plan.model, _undo_target(root)))
    if server is None:
        return
    try:
        checked = time_cli(root, "rollback", "--env", ENV, "--push")
        print(f"rollback --push (CLI, whole process, artifact HEAD on SeaweedFS): "
              f"{checked:.3f} s")
    finally:
        server.__exit__(None, None, None)  # type: ignore[attr-defined]


def _undo_target(root: Path) -> str:
    plan = rollback.plan_rollback(root, rollback.RollbackRequest(
        env=ENV, mode=rollback.PUSH, skip_artifact_check=True))
    return plan.to_version



def best_of(runs: int, work: Callable[[], object]) -> tuple[float, object]:
    """The fastest of `runs` timings of `work()` (and its last result)."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def gitpython_file_history(repo: Any, ref: str, path: str) -> list[tuple[str, bytes]]:
    found = []
    for c in repo.iter_commits(ref, paths=path):
        try:
            found.append((c.hexsha, (c.tree / path).data_stream.read()))
        except KeyError:
            continue
    return found


def gitpython_tree_files(repo: Any, ref: str, under: str) -> dict[str, bytes]:
    tree = repo.commit(ref).tree / under
    return {b.path: b.data_stream.read() for b in tree.traverse() if b.type == "blob"}


def bench_gitpython(root: Path) -> None:
    """gitpython vs the git CLI path: the same answers, timed in the same run."""
    from ggufops import git as cli_git

    started = time.perf_counter()
    try:
        import git as gitpython
    except ImportError:
        print("gitpython: not installed (pip install gitpython to compare)")
        return
    imported = time.perf_counter() - started
    repo = gitpython.Repo(root)
    path = f"environments/{ENV}.yaml"
    cases = [("file history of the env file", lambda: cli_git.file_history(root, "main", path),
              lambda: gitpython_file_history(repo, "main", path)),
             ("all files under registry/", lambda: cli_git.read_tree_files(root, "main",
                                                                           ["registry"]),
              lambda: gitpython_tree_files(repo, "main", "registry"))]
    print(f"gitpython {gitpython.__version__}: import {imported:.3f} s (the CLI path: none)")
    for label, ours, theirs in cases:
        cli_s, cli_result = best_of(3, ours)
        py_s, py_result = best_of(3, theirs)
        same = len(cli_result) == len(py_result)  # type: ignore[arg-type]
        print(f"  {label}: git CLI {cli_s:.3f} s, gitpython {py_s:.3f} s, "
              f"gitpython/CLI = {py_s / cli_s:.1f}x ({len(py_result)} items, "  # type: ignore[arg-type]
              f"same count: {same})")


if __name__ == "__main__":
    main()
