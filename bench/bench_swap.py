"""Swaps under load: a constant stream of completions while `ggufops serve` swaps models.

Two client threads send /v1/completions back to back (16 tokens each) to a real
`ggufops serve` on the toy models: first a steady period, then 10 swaps (2.0.0 <-> 2.1.0
through the admin API). Prints requests served and failed (goal: 0 failed) and latency
p50/p95 in steady state vs. requests that overlapped a swap.

    .venv/bin/python bench/bench_swap.py [--swaps 10] [--clients 2] [--steady 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ggufops import toy
from ggufops.store import ArtifactStore, file_sha256
from testing.runtime import TOKEN, Proc, http, serve_args
from testing.toys import TOY_DIR


@dataclass
class Result:
    start: float
    end: float
    ok: bool


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = (len(ordered) - 1) * q / 100
    lo, hi = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (index - lo)


def client(url: str, stop: threading.Event, results: list[Result]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            status, _ = http("POST", f"{url}/v1/completions",
                             {"prompt": "def main():", "max_tokens": 16})
            ok = status == 200
        except OSError:
            ok = False
        results.append(Result(start, time.perf_counter(), ok))


def load(url: str, version: str, digest: str) -> tuple[float, float]:
    start = time.perf_counter()
    status, reply = http("POST", f"{url}/admin/models",
                         {"name": "llama3-instruct", "version": version, "sha256": digest,
                          "display_id": f"llama3-instruct-v{version}-f32",
                          "inference": {"temperature": 0.0}}, token=TOKEN)
    if status not in (200, 201):
        raise SystemExit(f"load of {version} failed: {reply}")
    return start, time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of steady state")
    args = parser.parse_args()
    models = toy.build_toy_set(TOY_DIR, names=["baseline", "improved"])
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        store = ArtifactStore(Path(tmp) / "store")
        store.prepare()
        digests = {}
        for version, name in (("2.0.0", "baseline"), ("2.1.0", "improved")):
            digests[version] = file_sha256(models[name])
            shutil.copyfile(models[name], store.path_for(digests[version]))
        token = Path(tmp) / "token"
        token.write_text(TOKEN)
        server = Proc(serve_args(store.root, token), Path(tmp) / "serve.log")
        try:
            return run(server.url, digests, args)
        finally:
            server.stop()


def run(url: str, digests: dict[str, str], args: argparse.Namespace) -> int:
    load(url, "2.0.0", digests["2.0.0"])
    results: list[Result] = []
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(url, stop, results))
               for _ in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(args.steady)
    steady_end = time.perf_counter()
    windows = []
    for i in range(args.swaps):
        version = "2.1.0" if i % 2 == 0 else "2.0.0"
        windows.append(load(url, version, digests[version]))
        time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    report(results, steady_end, windows, args)
    return 0 if all(r.ok for r in results) else 1


def report(results: list[Result], steady_end: float, windows: list[tuple[float, float]],
           args: argparse.Namespace) -> None:
    steady = [r for r in results if r.end <= steady_end]
    during = [r for r in results
              if any(r.start <= end and r.end >= start for start, end in windows)]
    failed = [r for r in results if not r.ok]
    swap_times = [end - start for start, end in windows]
    print(f"{args.swaps} swaps under {args.clients} back-to-back clients (16 tokens/request)")
    print(f"requests served: {len(results) - len(failed)}   failed: {len(failed)} (goal 0)")
    print(f"swap (verify + load + smoke test + switch): p50 {percentile(swap_times, 50) * 1e3:.0f}"
          f" ms, max {max(swap_times) * 1e3:.0f} ms")
    print(f"{'latency':<28}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}")
    for label, group in (("steady state", steady), ("overlapping a swap", during)):
        lat = [(r.end - r.start) * 1e3 for r in group]
        print(f"{label:<28}{len(group):>9}{percentile(lat, 50):>9.1f}{percentile(lat, 95):>9.1f}")


if __name__ == "__main__":
    sys.exit(main())
