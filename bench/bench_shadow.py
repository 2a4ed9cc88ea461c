"""Shadow traffic overhead: the primary's latency with 100% of requests mirrored vs none.

bench_swap's steady load (two client threads sending /v1/completions back to back, 16
tokens each) against a real `ggufops serve` on the toy models, in alternating blocks
(no shadow, shadow at 100%, no shadow, ...) so drift on a shared machine hits both alike.
Prints the primary's p50/p95 per condition, the p95 ratio with a bootstrap 95% interval,
how many requests the shadow ran and dropped (its bounded queue) and its agreement.
Goal (issue 12): shadowing 100% adds <= 5% to the primary's p95.

    .venv/bin/python -m bench.bench_shadow [--blocks 4] [--seconds 8] [--clients 2] [--real]

--real serves the real SmolLM2-135M Q4_1 with its q8_0 twin as the shadow instead of toys.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from ggufops.artifacts.store import ArtifactStore
from ggufops.hashing import file_sha256
from ggufops.llama import toy
from ggufops.percentile import interpolated
from testing.runtime import TOKEN, Proc, http, serve_args
from testing.toys import TOY_DIR

MODEL = "llama3-instruct"


def client(url: str, stop: threading.Event, out: list[float], failed: list[int]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        status, _ = http("POST", f"{url}/v1/completions",
                         {"model": MODEL, "prompt": "def main():", "max_tokens": 16})
        if status == 200:
            out.append(time.perf_counter() - start)
        else:
            failed.append(status)


def block(url: str, clients: int, seconds: float) -> tuple[list[float], list[int]]:
    stop, latencies, failed = threading.Event(), [], []
    threads = [threading.Thread(target=client, args=(url, stop, latencies, failed))
               for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return latencies, failed


def load(url: str, version: str, digest: str, role: str = "primary") -> None:
    body = {"name": MODEL, "version": version, "sha256": digest,
            "inference": {"temperature": 0.0, "max_tokens": 16, "prompt_template": "chatml"}}
    if role != "primary":
        body.update(role=role, weight=100)
    status, reply = http("POST", f"{url}/admin/models", body, token=TOKEN, timeout=120)
    assert status in (200, 201), reply


def ratio_interval(with_shadow: list[float], without: list[float],
                   rounds: int = 1000) -> tuple[float, float]:
    rng = random.Random(12)
    ratios = sorted(interpolated(rng.choices(with_shadow, k=len(with_shadow)), 95)
                    / interpolated(rng.choices(without, k=len(without)), 95)
                    for _ in range(rounds))
    return ratios[int(rounds * 0.025)], ratios[int(rounds * 0.975)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=4, help="blocks per condition")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--real", action="store_true", help="SmolLM2 and its q8_0 twin")
    args = parser.parse_args()
    if args.real:
        from testing.realmodels import smollm2_path, smollm2_twin

        models = {"baseline": smollm2_path(), "degraded": smollm2_twin("q8_0")}
    else:
        models = toy.build_toy_set(TOY_DIR, names=["baseline", "degraded"])
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        store = ArtifactStore(Path(tmp) / "store")
        store.prepare()
        digests = {}
        for name, path in models.items():
            digests[name] = file_sha256(path)
            shutil.copyfile(path, store.path_for(digests[name]))
        (Path(tmp) / "token").write_text(TOKEN)
        proc = Proc([*serve_args(store.root, Path(tmp) / "token"), "--ctx", "512"],
                    Path(tmp) / "serve.log")
        try:
            load(proc.url, "2.0.0", digests["baseline"])
            block(proc.url, args.clients, 2.0)  # warm up
            runs: dict[bool, list[float]] = {False: [], True: []}
            failures = 0
            for i in range(2 * args.blocks):
                shadowing = i % 2 == 1
                if shadowing:
                    load(proc.url, "2.1.0", digests["degraded"], role="shadow")
                else:
                    http("DELETE", f"{proc.url}/admin/models/{MODEL}/shadow", token=TOKEN)
                latencies, failed = block(proc.url, args.clients, args.seconds)
                runs[shadowing] += latencies
                failures += len(failed)
            _, report = http("GET", f"{proc.url}/admin/shadow?model={MODEL}", token=TOKEN)
        finally:
            proc.stop()
    off, on = runs[False], runs[True]
    what = "SmolLM2 Q4_1, shadow q8_0" if args.real else "toy models"
    print(f"shadow overhead ({what}) at bench_swap's steady load: {args.clients} clients, "
          f"16 tokens, {args.blocks} alternating blocks of {args.seconds:g} s per condition")
    print(f"{'condition':<22}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}")
    for label, values in (("no shadow", off), ("shadow 100%", on)):
        print(f"{label:<22}{len(values):>9}{statistics.median(values) * 1000:>9.2f}"
              f"{interpolated(values, 95) * 1000:>9.2f}")
    ratio = interpolated(on, 95) / interpolated(off, 95)
    lo, hi = ratio_interval(on, off)
    print(f"primary p95 ratio shadow/none: {ratio:.3f} (bootstrap 95% interval {lo:.3f}-"
          f"{hi:.3f}); goal <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}")
    stats = report.get("stats") or {}
    print(f"failed requests: {failures}; shadow completed {stats.get('mirrored')} mirrored "
          f"requests (errors {stats.get('errors')}), preempted {report.get('preempted')} "
          f"(a client request arrived), dropped {report.get('dropped')} (queue full); "
          f"exact match {stats.get('exact_match_rate')}, token overlap "
          f"{stats.get('token_overlap_mean')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
