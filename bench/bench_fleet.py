"""Fleet-wide rollback latency: from the push of a revert commit until EVERY host serves the
old version again (its /v1/models), with three real hosts (serve + agent each, in network
namespaces over veth links when run as root, else on loopback ports), agents polling git
every --interval seconds with ±10% jitter, started at random offsets. Goal (issue 13): p95
at most 2 s with 1 s polling.

    .venv/bin/python -m bench.bench_fleet [--rounds 10] [--hosts 3] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from ggufops.percentile import interpolated
from testing.multihost import Fleet, NetHost, fleet
from testing.runtime import standalone_world, wait_for


def all_serve(hosts: list[NetHost], version: str) -> bool:
    return all(h.version() == version for h in hosts)


def one_rollback(f: Fleet) -> float:
    """Deploy 2.1.0 and wait for it everywhere; push its revert; seconds until all serve
    2.0.0 again."""
    deploy = f.world.deploy("2.1.0")
    wait_for(lambda: all_serve(f.hosts, "2.1.0"), timeout=120, interval=0.02)
    time.sleep(random.uniform(0, 1))  # the push lands anywhere in the agents' poll cycles
    start = time.perf_counter()
    f.world.revert(deploy)
    wait_for(lambda: all_serve(f.hosts, "2.0.0"), timeout=120, interval=0.01)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, \
            standalone_world(Path(tmp)) as (world, procs), fleet(world, procs) as f:
        world.publish("2.0.0", "baseline")
        world.publish("2.1.0", "improved")
        world.deploy("2.0.0")
        for i in range(args.hosts):
            time.sleep(random.uniform(0, args.interval))  # agents out of step
            f.add_host(f"h{i + 1}", interval=args.interval, extra=["--jitter", "0.1"])
        wait_for(lambda: all_serve(f.hosts, "2.0.0"), timeout=120)
        times = [one_rollback(f) for _ in range(args.rounds)]
        print(f"fleet rollback, {args.hosts} hosts ({f.mode}"
              + (f": {f.reason}" if f.reason else "") + f"), polling every "
              f"{args.interval:g} s ±10%, {args.rounds} rollbacks")
        print(f"  push -> every host serving the old version: p50 {interpolated(times, 50):.2f} s,"
              f" p95 {interpolated(times, 95):.2f} s, max {max(times):.2f} s (goal p95 <= 2 s)")
        print("  each: " + " ".join(f"{t:.2f}" for t in times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
