"""Rollback latency through the sync agent: from the revert commit's push to the model info
endpoint (/v1/models) reporting the old version, with the artifact already in the store.

10 rollbacks at a 1 s poll interval, then 10 with the POST /sync trigger (a webhook) sent
right after the push. Real SeaweedFS, git (bare remote), `ggufops serve` and `ggufops agent`.
Goal (issue 6): p95 under 2 s.

    .venv/bin/python bench/bench_rollback.py [--rounds 10] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testing.repos import git
from testing.runtime import World, http, serving_version, standalone_world, wait_for


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = (len(ordered) - 1) * q / 100
    lo, hi = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (index - lo)


def one_rollback(world: World, server_url: str, agent_url: str, trigger: bool,
                 interval: float) -> float:
    deploy = world.deploy("2.1.0")
    wait_for(lambda: serving_version(server_url) == "2.1.0", what="2.1.0", interval=0.01)
    time.sleep(random.uniform(0, interval))  # rollbacks come at any moment of the poll cycle
    git(world.repo, "revert", "--no-edit", deploy)  # the generated revert commit
    start = time.perf_counter()
    git(world.repo, "push", "-q", "origin", "main")
    if trigger:
        http("POST", f"{agent_url}/sync")
    wait_for(lambda: serving_version(server_url) == "2.0.0", what="rollback", interval=0.005)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rollback-") as tmp, \
            standalone_world(Path(tmp)) as (world, procs):
        world.publish("2.0.0", "baseline")
        world.publish("2.1.0", "improved")
        world.deploy("2.0.0")
        server = procs.serve(world.store, world.token_file)
        agent = procs.agent(world, server.url, interval=args.interval)
        wait_for(lambda: serving_version(server.url) == "2.0.0", what="first deploy")
        print(f"rollback latency, artifact cached, agent interval {args.interval:g} s, "
              f"{args.rounds} rollbacks each")
        print(f"{'mode':<22}{'p50 s':>8}{'p95 s':>8}{'min s':>8}{'max s':>8}")
        worst = 0.0
        for label, trigger in ((f"poll every {args.interval:g} s", False),
                               ("POST /sync trigger", True)):
            times = [one_rollback(world, server.url, agent.url, trigger, args.interval)
                     for _ in range(args.rounds)]
            p95 = percentile(times, 95)
            worst = max(worst, p95)
            print(f"{label:<22}{statistics.median(times):>8.3f}{p95:>8.3f}"
                  f"{min(times):>8.3f}{max(times):>8.3f}")
        print(f"goal p95 < 2 s: {'met' if worst < 2.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
