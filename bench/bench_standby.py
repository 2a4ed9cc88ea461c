"""Hot standby: rollback latency with the real SmolLM2-135M, from the push of the revert
commit until the agent reports the revert applied and /v1/models serves the old version.

One run, real SeaweedFS, git with a bare remote, `ggufops serve` + `ggufops agent`:
2.0.0 is SmolLM2-135M-Instruct Q4_1, 2.1.0 its q4_0 twin. Each round deploys 2.1.0, waits
until it serves, then pushes the revert (the agent polling every `--interval` s, or told by
POST /sync). Done twice: `serve --standby auto` (2.0.0 stays loaded: the rollback is a
pointer swap) and `serve --standby off` (the rollback loads 2.0.0 again), and printed as the
ratio of the p95s. Goals (issue 12): p95 <= 0.5 s with /sync, <= 1.5 s with 1 s polling.

    .venv/bin/python -m bench.bench_standby [--rounds 5] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_rollback import push_revert, rolled_back
from ggufops.percentile import interpolated
from testing.realmodels import smollm2_path, smollm2_twin
from testing.runtime import (
    Processes,
    World,
    metrics,
    serving_version,
    standalone_world,
    wait_for,
)

LOADS = 'ggufops_model_loads_total{model="llama3-instruct",outcome="success"}'


def one_rollback(world: World, server_url: str, agent_url: str, trigger: bool,
                 interval: float) -> float:
    deploy = world.deploy("2.1.0")
    wait_for(lambda: serving_version(server_url) == "2.1.0", what="2.1.0", timeout=300,
             interval=0.01)
    time.sleep(random.uniform(0, interval))  # the push comes at any moment of a poll cycle
    revert, start = push_revert(world, deploy, agent_url, trigger)
    wait_for(lambda: rolled_back(world, server_url, agent_url, revert), what="rollback",
             timeout=300, interval=0.005)
    return time.perf_counter() - start


def row(label: str, times: list[float]) -> str:
    return (f"{label:<38}{statistics.median(times):>8.3f}{interpolated(times, 95):>8.3f}"
            f"{min(times):>8.3f}{max(times):>8.3f}")


def measure(world: World, procs: Processes, mode: str, args: argparse.Namespace,
            ) -> dict[str, list[float]]:
    state = dataclasses.replace(world, state_dir=world.state_dir.parent / f"agent-{mode}")
    server = procs.serve(world.store, world.token_file, extra=["--standby", mode,
                                                               "--ctx", "512"])
    agent = procs.agent(state, server.url, interval=args.interval)
    wait_for(lambda: serving_version(server.url) == "2.0.0", what="2.0.0", timeout=300)
    times = {how: [one_rollback(world, server.url, agent.url, how == "POST /sync",
                                args.interval) for _ in range(args.rounds)]
             for how in (f"poll every {args.interval:g} s", "POST /sync")}
    loads = metrics(server.url)[LOADS]
    for label, values in times.items():
        print(row(f"standby {mode}, {label}", values))
    print(f"  (standby {mode}: {loads:.0f} model loads in {2 * args.rounds} deploy+rollback "
          "rounds)")
    agent.stop()
    server.stop()
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-standby-") as tmp, \
            standalone_world(Path(tmp)) as (world, procs):
        world.models.update(q4_1=smollm2_path(), q4_0=smollm2_twin("q4_0"))
        world.publish("2.0.0", "q4_1")
        world.publish("2.1.0", "q4_0")
        world.deploy("2.0.0")
        print(f"SmolLM2-135M rollback (revert push -> applied and 2.0.0 served), "
              f"{args.rounds} rollbacks per row")
        print(f"{'mode':<38}{'p50 s':>8}{'p95 s':>8}{'min s':>8}{'max s':>8}")
        hot = measure(world, procs, "auto", args)
        cold = measure(world, procs, "off", args)
        for label in hot:
            ratio = interpolated(cold[label], 95) / interpolated(hot[label], 95)
            print(f"{label}: p95 without standby / with standby = {ratio:.1f}x")
        sync, poll = (interpolated(hot[k], 95) for k in ("POST /sync", next(iter(hot))))
        print(f"goals (with standby): /sync p95 {sync:.3f} s <= 0.5 s "
              f"{'met' if sync <= 0.5 else 'NOT met'}; polling p95 {poll:.3f} s <= 1.5 s "
              f"{'met' if poll <= 1.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
