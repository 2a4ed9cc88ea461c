"""`ggufops register` against a plain boto3 `upload_file` of the same file, same server, same run.

For each file (the real SmolLM2-135M-Instruct q8_0 twin, 145 MB, and a synthetic GGUF of
--big-mb MiB), in interleaved rounds (the order alternates, medians are printed):
  * boto3 upload_file: the file to the same embedded SeaweedFS, boto3's defaults (8 MiB
    parts, 10 threads), one client created once and not timed;
  * ggufops register (the Python API the CLI calls, given one S3Remote created once and
    not timed, like the client above): header checks, one read that copies and hashes
    md5 + sha256, multipart upload to DVC's key, HEAD, the copy moved into DVC's cache,
    workspace link, pointer, .gitignore, version file; every round registers a new version
    whose bytes differ (one tensor byte), so nothing is deduplicated, and the upload
    baseline sends the very same variant;
  * the ratio of their speeds (goal: register >= 0.7x upload_file), and register's phases.
Then, once per file, as processes (interpreter start, imports and client included on both
sides): `ggufops register` against `python -c <boto3 upload_file>`, with the CLI's peak RSS
(getrusage children maxrss from a small launcher, and the child's own VmHWM; goal
< 150 MB); and, for the 145 MB file, the previous implementation (copy, then `dvc add` +
`dvc push -j 1` in one DVC process) for comparison.

Run: .venv/bin/python -m bench.bench_register [--rounds 5] [--big-mb 512] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from ggufops.artifacts import dvc as artifacts
from ggufops.artifacts import s3config
from ggufops.artifacts.register import RegisterRequest, register
from ggufops.artifacts.s3server import S3Server
from ggufops.registry.registry import Registry
from testing.realmodels import smollm2_twin
from testing.repos import GIT_TEST_ENV, make_registry
from testing.s3 import configure_s3

MiB = 1024 * 1024
# A small launcher: on Linux a child's ru_maxrss starts at its parent's RSS (fork + exec keep
# the high-water mark), so the measured CLI must not be forked from this big process.
LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True)
wall = time.perf_counter() - start
maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(maxrss, f"{wall:.2f}", proc.stderr.split()[-1])
"""
UPLOAD_PROCESS = """
import os, sys, boto3
from botocore.config import Config
client = boto3.client("s3", region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
client.upload_file(sys.argv[1], os.environ["BENCH_BUCKET"], sys.argv[2])
"""
# the CLI with its VmHWM printed at exit (an atexit hook in a tiny wrapper)
CLI_WITH_HWM = """
import atexit, sys
def hwm():
    line = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    print(int(line.split()[1]) // 1024, file=sys.stderr)
atexit.register(hwm)
from ggufops.cli import main
sys.argv[0] = "ggufops"
main()
"""


class PhaseClock:
    """A progress.Reporter that times each phase of one register."""

    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = [("checks", time.perf_counter())]

    def phase(self, name: str, total: int | None = None) -> None:
        self.started.append((name, time.perf_counter()))

    def close(self) -> None:
        self.started.append(("end", time.perf_counter()))

    def durations(self) -> dict[str, float]:
        marks = self.started
        return {name: marks[i + 1][1] - t for i, (name, t) in enumerate(marks[:-1])}


def write_gguf(path: Path, megabytes: int) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_file_type(0)
    writer.add_token_list([chr(65 + i) for i in range(8)])
    rng = np.random.default_rng(0)
    writer.add_tensor("blob.weight", rng.standard_normal((megabytes * MiB // 4 // 1024, 1024),
                                                         dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def variant(source: Path, dest: Path, round_no: int) -> Path:
    """A copy of `source` whose last tensor byte differs (a new md5, the same size)."""
    shutil.copyfile(source, dest)
    with dest.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([(last + 1 + round_no) % 256]))
    return dest


def timed(fn: Callable[[], object]) -> float:
    os.sync()  # no dirty pages from the previous step in this measurement
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-mb", type=int, default=512, help="synthetic GGUF size in MiB")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args()
    os.environ.update(GIT_TEST_ENV)
    work = Path(tempfile.mkdtemp(prefix="bench-register-", dir=args.dir))
    try:
        with S3Server(work / "s3") as server:
            print(f"SeaweedFS started in {server.startup_seconds:.2f} s at {server.endpoint}")
            repo = make_registry(work / "registry")
            configure_s3(repo, server.info())
            files = {"smollm2-q8_0": smollm2_twin("q8_0"),
                     f"synthetic-{args.big_mb}MiB": write_gguf(work / "big.gguf", args.big_mb)}
            for index, (name, path) in enumerate(files.items()):
                measure(work, repo, name, path, args.rounds, index)
            old_path(work, repo, files["smollm2-q8_0"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, repo: Path, name: str, source: Path, rounds: int, index: int) -> None:
    size = source.stat().st_size
    remote = artifacts.S3Remote.from_repo(repo)
    client, bucket = remote.client, s3config.resolve(repo).bucket
    runs: dict[str, list[float]] = {"boto3 upload_file": [], "ggufops register": []}
    phases: list[dict[str, float]] = []
    print(f"\n== {name}: {size / MiB:.0f} MiB ({size:,} bytes), {rounds} interleaved rounds")
    for r in range(rounds):
        path = variant(source, work / f"variant-{index}.gguf", r)
        clocks: list[PhaseClock] = []

        def upload() -> None:
            client.upload_file(str(path), bucket, f"baseline/{name}/{r}")  # noqa: B023

        def ours() -> None:
            clocks.append(PhaseClock())  # noqa: B023
            register(Registry(repo), RegisterRequest(path, f"bench{index}", f"1.0.{r}"),  # noqa: B023
                     reporter=clocks[-1], remote=remote)  # noqa: B023

        order = [("boto3 upload_file", upload), ("ggufops register", ours)]
        for label, fn in order if r % 2 == 0 else reversed(order):
            runs[label].append(timed(fn))
        phases.append(clocks[-1].durations())
    report(runs, phases, size)
    cli_rss(work, repo, source, index)


def report(runs: dict[str, list[float]], phases: list[dict[str, float]], size: int) -> None:
    mbps = {label: size / MiB / statistics.median(t) for label, t in runs.items()}
    for label, value in mbps.items():
        each = ", ".join(f"{t:.2f}" for t in runs[label])
        print(f"{label:>18}: {value:6.1f} MB/s median  (seconds per round: {each})")
    ratio = mbps["ggufops register"] / mbps["boto3 upload_file"]
    print(f"ratio register / upload_file: {ratio:.2f}   (goal >= 0.7)")
    names = list(phases[0])
    medians = {n: statistics.median(p.get(n, 0.0) for p in phases) for n in names}
    print("register phases (median s): " + ", ".join(f"{n} {v:.2f}" for n, v in medians.items()))


def cli_rss(work: Path, repo: Path, source: Path, index: int) -> None:
    """The CLI registering one more variant, against a boto3 upload process, same bytes."""
    path = variant(source, work / f"variant-{index}.gguf", 200)
    cli = [sys.executable, "-c", CLI_WITH_HWM, "-C", str(repo), "register", str(path),
           "--model", f"bench{index}", "--version", "9.9.9", "--json"]
    env = {**os.environ, **configure_env(repo)}
    os.sync()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", UPLOAD_PROCESS, str(path), f"process/{index}"],
                   check=True, env=env)
    upload_s = time.perf_counter() - start
    os.sync()
    maxrss, wall, hwm = subprocess.run([sys.executable, "-c", LAUNCHER, *cli], check=True,
                                       capture_output=True, text=True).stdout.split()
    print(f"as processes: `ggufops register` {wall} s, `python -c <boto3 upload_file>` "
          f"{upload_s:.2f} s (ratio {upload_s / float(wall):.2f}); register's peak RSS "
          f"{maxrss} MB (getrusage), {hwm} MB (VmHWM)   (goal < 150 MB)")


def configure_env(repo: Path) -> dict[str, str]:
    s = s3config.resolve(repo)
    return {"AWS_ACCESS_KEY_ID": s.access_key_id or "", "AWS_SECRET_ACCESS_KEY":
            s.secret_access_key or "", "AWS_ENDPOINT_URL_S3": s.endpoint_url or "",
            "BENCH_BUCKET": s.bucket}


def old_path(work: Path, repo: Path, source: Path) -> None:
    """The previous register's core: copy + hash, then `dvc add` + `dvc push -j 1`."""
    target = repo / "registry" / "old" / "1.0.0.gguf"
    target.parent.mkdir(parents=True)
    path = variant(source, work / "variant-old.gguf", 77)
    settings = s3config.resolve(repo)

    def old() -> None:
        shutil.copyfile(path, target)
        artifacts.dvc_add(repo, target, push_to=settings)

    print(f"\nfor comparison, the previous implementation on {source.name} "
          f"(copy, dvc add, dvc push -j 1): {timed(old):.2f} s, once")


if __name__ == "__main__":
    main()
