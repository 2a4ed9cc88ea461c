"""Rollback latency through the sync agent: from the revert commit's push until the agent
reports the revert applied and the model info endpoint (/v1/models) serves the old version.

Three ways, N rollbacks each, in one run (real SeaweedFS behind a TCP proxy, git with a
bare remote, `ggufops serve` and `ggufops agent`):
  poll           the artifact is in the store; the agent notices on its next poll
  POST /sync     the same, with the webhook sent right after the push (the baseline)
  slow download  S3 crawls at 3,000 B/s and the rollback undoes a deploy whose artifact is
                 still downloading (issue 15: it waited 44 s behind the download); POST /sync
The last is printed as a ratio to the POST /sync baseline: the newest desired state must
not wait for a download it no longer needs. Goal (issue 6): p95 under 2 s.

    .venv/bin/python -m bench.bench_rollback [--rounds 10] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ggufops.percentile import interpolated
from testing.repos import git
from testing.runtime import (
    Proc,
    ThrottledProxy,
    World,
    get,
    http,
    serving_version,
    standalone_world,
    wait_for,
)

SLOW_RATE = 3000  # bytes/s, as in the probe of issue 15


def rolled_back(world: World, server_url: str, agent_url: str, revert: str) -> bool:
    return get(f"{agent_url}/status")["applied_commit"] == revert \
        and serving_version(server_url) == "2.0.0"


def push_revert(world: World, deploy: str, agent_url: str, trigger: bool) -> tuple[str, float]:
    git(world.repo, "revert", "--no-edit", deploy)  # the generated revert commit
    revert = git(world.repo, "rev-parse", "HEAD")
    start = time.perf_counter()
    git(world.repo, "push", "-q", "origin", "main")
    if trigger:
        http("POST", f"{agent_url}/sync")
    return revert, start


def cached_rollback(world: World, server: Proc, agent: Proc, trigger: bool,
                    interval: float) -> float:
    deploy = world.deploy("2.1.0")
    wait_for(lambda: serving_version(server.url) == "2.1.0", what="2.1.0", interval=0.01)
    time.sleep(random.uniform(0, interval))  # rollbacks come at any moment of the poll cycle
    revert, start = push_revert(world, deploy, agent.url, trigger)
    wait_for(lambda: rolled_back(world, server.url, agent.url, revert), what="rollback",
             interval=0.005)
    return time.perf_counter() - start


def rollback_during_download(world: World, server: Proc, agent: Proc,
                             proxy: ThrottledProxy) -> float:
    proxy.rate = SLOW_RATE
    deploy = world.deploy("2.2.0")  # never completes at this rate: it is never stored
    wait_for(lambda: get(f"{agent.url}/status")["phase"] == "downloading"
             and bool(world.store_temp_files()), what="2.2.0 downloading", interval=0.01)
    time.sleep(random.uniform(0, 1.0))
    revert, start = push_revert(world, deploy, agent.url, trigger=True)
    wait_for(lambda: rolled_back(world, server.url, agent.url, revert), what="rollback",
             interval=0.005)
    elapsed = time.perf_counter() - start
    proxy.rate = None
    return elapsed


def row(label: str, times: list[float]) -> str:
    return (f"{label:<22}{statistics.median(times):>8.3f}{interpolated(times, 95):>8.3f}"
            f"{min(times):>8.3f}{max(times):>8.3f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rollback-") as tmp, \
            standalone_world(Path(tmp)) as (world, procs):
        for version, toy_name in (("2.0.0", "baseline"), ("2.1.0", "improved"),
                                  ("2.2.0", "degraded")):
            world.publish(version, toy_name)
        host, port = world.s3.endpoint.removeprefix("http://").split(":")
        proxy = ThrottledProxy(host, int(port))
        proxy.up()
        world.deploy("2.0.0")
        server = procs.serve(world.store, world.token_file)
        agent = procs.agent(world, server.url, interval=args.interval,
                            s3_endpoint=proxy.endpoint)
        wait_for(lambda: serving_version(server.url) == "2.0.0", what="first deploy")
        print(f"rollback latency (push -> revert applied and 2.0.0 served), agent interval "
              f"{args.interval:g} s, {args.rounds} rollbacks each")
        print(f"{'mode':<22}{'p50 s':>8}{'p95 s':>8}{'min s':>8}{'max s':>8}")
        polled = [cached_rollback(world, server, agent, False, args.interval)
                  for _ in range(args.rounds)]
        print(row(f"poll every {args.interval:g} s", polled))
        synced = [cached_rollback(world, server, agent, True, args.interval)
                  for _ in range(args.rounds)]
        print(row("POST /sync", synced))
        slow = [rollback_during_download(world, server, agent, proxy)
                for _ in range(args.rounds)]
        print(row("slow download, /sync", slow))
        proxy.down()
        ratio = statistics.median(slow) / statistics.median(synced)
        print(f"slow-download rollback p50 / POST /sync p50: {ratio:.2f}x")
        worst = max(interpolated(t, 95) for t in (polled, synced, slow))
        print(f"goal p95 < 2 s: {'met' if worst < 2.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
