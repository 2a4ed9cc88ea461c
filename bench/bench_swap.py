"""Swaps under load: a constant stream of completions while `ggufops serve` swaps models.

Two client threads send /v1/completions back to back (16 tokens each) to a real
`ggufops serve` on the toy models: first a steady period, then 10 swaps (2.0.0 <-> 2.1.0
through the admin API). Prints requests served and failed (goal: 0 failed) and latency
p50/p95 in steady state vs. requests that overlapped a swap.

`--stack both` (the default) runs the same load twice in one run: against `ggufops serve`
(Python's http.server with ggufops' limits) and against the same App behind uvicorn +
starlette (bench/asgi_serve.py), and prints the latency ratios: the measurement behind
the HTTP stack decision in the README. uvicorn and starlette are not ggufops dependencies:
without them (`pip install uvicorn starlette`) it measures `ggufops serve` only.

    .venv/bin/python -m bench.bench_swap [--swaps 10] [--clients 2] [--steady 5]
        [--stack both|stdlib|asgi]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ggufops.artifacts.store import ArtifactStore
from ggufops.hashing import file_sha256
from ggufops.llama import toy
from ggufops.percentile import interpolated
from testing.runtime import TOKEN, Proc, http, serve_args
from testing.toys import TOY_DIR


@dataclass
class Result:
    start: float
    end: float
    ok: bool


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


STACKS = {"stdlib": "ggufops serve (http.server + ggufops limits)",
          "asgi": "uvicorn + starlette (bench/asgi_serve.py)"}


def asgi_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("uvicorn", "starlette"))


def server_args(stack: str, store: Path, token: Path) -> list[str]:
    if stack == "stdlib":
        return serve_args(store, token)
    return [sys.executable, str(Path(__file__).with_name("asgi_serve.py")), "--store",
            str(store), "--admin-token-file", str(token)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of steady state")
    parser.add_argument("--stack", choices=["both", *STACKS], default="both")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --stack both: alternate the stacks this many times")
    args = parser.parse_args()
    models = toy.build_toy_set(TOY_DIR, names=["baseline", "improved"])
    if args.stack == "both" and not asgi_available():
        print("uvicorn + starlette are not installed (`pip install uvicorn starlette`): "
              "measuring ggufops serve only")
        args.stack = "stdlib"
    stacks = list(STACKS) * args.rounds if args.stack == "both" else [args.stack]
    summaries: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        store = ArtifactStore(Path(tmp) / "store")
        store.prepare()
        digests = {}
        for version, name in (("2.0.0", "baseline"), ("2.1.0", "improved")):
            digests[version] = file_sha256(models[name])
            shutil.copyfile(models[name], store.path_for(digests[version]))
        token = Path(tmp) / "token"
        token.write_text(TOKEN)
        for stack in stacks:
            print(f"== {STACKS[stack]}")
            server = Proc(server_args(stack, store.root, token), Path(tmp) / f"{stack}.log")
            try:
                summaries.setdefault(stack, []).append(run(server.url, digests, args))
            finally:
                server.stop()
    if len(summaries) == 2:
        compare(summaries["stdlib"], summaries["asgi"])
    return 0 if all(s["failed"] == 0 for runs in summaries.values() for s in runs) else 1


def compare(stdlib: list[dict[str, float]], asgi: list[dict[str, float]]) -> None:
    """Medians over the alternating rounds of each figure, and their ratio."""
    print(f"== uvicorn + starlette relative to ggufops serve: medians of {len(stdlib)} "
          "alternating rounds, same run (>1: slower)")
    for key in ("steady_p50", "steady_p95", "swap_p50", "swap_p95", "served", "failed"):
        a, b = (statistics.median(r[key] for r in runs) for runs in (asgi, stdlib))
        ratio = f"{a / b:.2f}" if b else "-"
        print(f"{key:<12} {a:8.1f} vs {b:8.1f}   ratio {ratio}")


def run(url: str, digests: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
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
    return report(results, steady_end, windows, args)


def report(results: list[Result], steady_end: float, windows: list[tuple[float, float]],
           args: argparse.Namespace) -> dict[str, float]:
    steady = [r for r in results if r.end <= steady_end]
    during = [r for r in results
              if any(r.start <= end and r.end >= start for start, end in windows)]
    failed = [r for r in results if not r.ok]
    swap_times = [end - start for start, end in windows]
    print(f"{args.swaps} swaps under {args.clients} back-to-back clients (16 tokens/request)")
    print(f"requests served: {len(results) - len(failed)}   failed: {len(failed)} (goal 0)")
    swap_p50 = interpolated(swap_times, 50) * 1e3
    print(f"swap (verify + load + smoke test + switch): p50 {swap_p50:.0f}"
          f" ms, max {max(swap_times) * 1e3:.0f} ms")
    print(f"{'latency':<28}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}")
    summary = {"served": float(len(results) - len(failed)), "failed": float(len(failed))}
    for label, key, group in (("steady state", "steady", steady),
                              ("overlapping a swap", "swap", during)):
        lat = [(r.end - r.start) * 1e3 for r in group]
        p50, p95 = (interpolated(lat, 50), interpolated(lat, 95)) if lat else (math.nan,) * 2
        print(f"{label:<28}{len(group):>9}{p50:>9.1f}{p95:>9.1f}")
        summary.update({f"{key}_p50": p50, f"{key}_p95": p95})
    return summary


if __name__ == "__main__":
    sys.exit(main())
