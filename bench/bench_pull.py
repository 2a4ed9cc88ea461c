"""`pull` of a 200 MB artifact against plain boto3 `download_file`, same server, same run.

Prints, for the same object on the same embedded SeaweedFS (medians over interleaved rounds):
  * boto3 download_file MB/s (s3transfer: 10 threads of 8 MB ranged GETs, no hashing);
  * boto3 download_file + fsync MB/s (the same bytes made durable, like our pull does);
  * ggufops pull MB/s: read the version file, download + sha256 in the same pass + fsync +
    atomic rename into an empty content-addressed store; and the ratios (goal: >= 0.8 of
    download_file). Both reuse one boto3 client (created once, timed separately);
  * sha256 GB/s of this CPU (what a separate verification pass would cost);
  * peak RSS of a pull in a child process (getrusage children maxrss from a small launcher,
    and the child's own VmHWM; goal < 150 MB).

Run: .venv/bin/python -m bench.bench_pull [--mb 200] [--rounds 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from ggufops.artifacts import dvc as artifacts
from ggufops.artifacts import s3config
from ggufops.artifacts.pull import pull
from ggufops.artifacts.register import RegisterRequest, register
from ggufops.artifacts.s3server import S3Server
from ggufops.atomic import fsync_path
from ggufops.registry.registry import Registry
from testing.repos import GIT_TEST_ENV, make_registry
from testing.s3 import configure_s3

MiB = 1024 * 1024
PULL_CHILD = """
import sys
from pathlib import Path
from ggufops.artifacts.pull import pull
from ggufops.registry.registry import Registry
pull(Registry(Path(sys.argv[1])), "big@1.0.0", Path(sys.argv[2]), progress=False)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(hwm) // 1024)
"""
# A small launcher: on Linux a child's ru_maxrss starts at its parent's RSS (fork + exec keep
# the high-water mark), so the pull child must not be forked from this big process.
LAUNCHER = """
import resource, subprocess, sys
out = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], check=True,
                     capture_output=True, text=True).stdout
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, out.strip())
"""


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


def timed(fn, setup=None) -> float:  # type: ignore[no-untyped-def]
    if setup is not None:
        setup()
    os.sync()  # start every round with no dirty pages from the previous one
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sha256_gbps(path: Path) -> float:
    data = path.read_bytes()
    start = time.perf_counter()
    h = hashlib.sha256()
    view = memoryview(data)
    for i in range(0, len(data), MiB):
        h.update(view[i:i + MiB])
    return len(data) / (time.perf_counter() - start) / 1e9


def child_peak_rss_mb(repo: Path, store: Path) -> tuple[int, int]:
    """(getrusage children maxrss, VmHWM) in MB of one pull in a fresh child process."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, PULL_CHILD, str(repo), str(store)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200, help="artifact size in MiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args()
    os.environ.update(GIT_TEST_ENV)
    work = Path(tempfile.mkdtemp(prefix="bench-pull-", dir=args.dir))
    try:
        run(work, args.mb, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, megabytes: int, rounds: int) -> None:
    with S3Server(work / "s3") as server:
        print(f"SeaweedFS started in {server.startup_seconds:.2f} s at {server.endpoint}")
        repo = make_registry(work / "registry")
        configure_s3(repo, server.info())
        source = write_gguf(work / "big.gguf", megabytes)
        size = source.stat().st_size
        start = time.perf_counter()
        doc = register(Registry(repo), RegisterRequest(source, "big", "1.0.0")).doc
        print(f"artifact {size / MiB:.0f} MiB; register (hash, multipart upload, track) "
              f"{time.perf_counter() - start:.1f} s")
        measure(work, repo, doc, size, rounds)


def measure(work: Path, repo: Path, doc: dict, size: int, rounds: int) -> None:  # type: ignore[type-arg]
    start = time.perf_counter()
    remote = artifacts.S3Remote.from_repo(repo)
    client = remote.client
    print(f"S3 settings + boto3 client (once per process, not timed below): "
          f"{(time.perf_counter() - start) * 1000:.0f} ms")
    key = remote.key_for_md5(doc["artifact"]["dvc_md5"])
    bucket = s3config.resolve(repo).bucket
    plain = work / "boto3.gguf"
    store = work / "store"

    def boto3_plain() -> None:
        client.download_file(bucket, key, str(plain))

    def boto3_durable() -> None:
        client.download_file(bucket, key, str(plain))
        fsync_path(plain)

    def empty_store() -> None:
        shutil.rmtree(store, ignore_errors=True)

    def ours() -> None:  # like the agent: one S3Remote (boto3 client) for many pulls
        result = pull(Registry(repo), "big@1.0.0", store, progress=False, remote=remote)
        assert result.downloaded

    runs: dict[str, list[float]] = {"boto3": [], "boto3+fsync": [], "ggufops pull": []}
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits all three
        runs["boto3"].append(timed(boto3_plain))
        runs["boto3+fsync"].append(timed(boto3_durable))
        runs["ggufops pull"].append(timed(ours, setup=empty_store))
    mbps = {name: size / MiB / statistics.median(t) for name, t in runs.items()}
    for name, value in mbps.items():
        rounds_text = ", ".join(f"{size / MiB / t:.0f}" for t in runs[name])
        print(f"{name:>14}: {value:6.0f} MB/s median   (rounds: {rounds_text})")
    print(f"ratio pull / boto3 download_file:         {mbps['ggufops pull'] / mbps['boto3']:.2f}"
          "   (goal >= 0.8)")
    print(f"ratio pull / boto3 download_file + fsync: "
          f"{mbps['ggufops pull'] / mbps['boto3+fsync']:.2f}")
    print(f"sha256: {sha256_gbps(plain):.2f} GB/s on this CPU (hashed in-stream, no second read)")
    shutil.rmtree(store, ignore_errors=True)
    maxrss, hwm = child_peak_rss_mb(repo, store)
    print(f"peak RSS of a pull (child process): {maxrss} MB (getrusage), {hwm} MB (VmHWM)"
          "   (goal < 150 MB)")


if __name__ == "__main__":
    main()
