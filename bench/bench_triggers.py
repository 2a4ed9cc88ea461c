"""Rollback triggers: the time from a bad version starting to serve until the old version
serves again, with no person acting (the agent judges, pushes the revert, applies it).

One run, real SeaweedFS, git with a bare remote, `ggufops serve` + `ggufops agent`
(polling every `--interval` s), toy models: 2.0.0 is `baseline`, 2.1.0 `improved`. The
policy rolls production back when the mean rating is below 3.5 over at least
`--min-ratings` ratings (and `--min-requests` requests). Each round deploys 2.1.0, waits
until it serves (fault start), then a client sends completions one after another and rates
every answer of 2.1.0 with 1, until 2.0.0 answers again. The time includes the requests
the rule needs before it may judge, the agent's next evaluation, planning and pushing the
revert, and applying it (a pointer swap to the hot standby).

    .venv/bin/python -m bench.bench_triggers [--rounds 10] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ggufops.percentile import interpolated
from testing.repos import git
from testing.runtime import MODEL, World, http, serving_version, standalone_world, wait_for


def set_triggers(world: World, min_requests: int, min_ratings: int) -> None:
    path = world.repo / "registry" / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["rollback_triggers"] = {"production": {
        "window_s": 120, "min_requests": min_requests, "min_rating": 3.5,
        "min_ratings": min_ratings}}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


def one_round(world: World, server_url: str) -> tuple[float, int]:
    """(seconds from 2.1.0 serving to 2.0.0 answering again, requests sent meanwhile)."""
    git(world.repo, "pull", "-q", "--ff-only", "origin", "main")  # the agent's last revert
    world.deploy("2.1.0")
    wait_for(lambda: serving_version(server_url) == "2.1.0", what="2.1.0", timeout=300,
             interval=0.01)
    start, sent = time.perf_counter(), 0
    while True:
        status, reply = http("POST", f"{server_url}/v1/completions",
                             {"model": MODEL, "prompt": "The ", "max_tokens": 4})
        sent += 1
        if status == 200 and "-v2.0.0-" in str(reply["model"]):
            return time.perf_counter() - start, sent
        if status == 200:
            http("POST", f"{server_url}/v1/feedback", {"id": reply["id"], "rating": 1})
        if time.perf_counter() - start > 300:
            raise SystemExit("no automatic rollback within 300 s; see the agent's log")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--min-requests", type=int, default=5)
    parser.add_argument("--min-ratings", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-triggers-") as tmp, \
            standalone_world(Path(tmp)) as (world, procs):
        world.publish("2.0.0", "baseline")
        world.publish("2.1.0", "improved")
        set_triggers(world, args.min_requests, args.min_ratings)
        world.deploy("2.0.0")
        server = procs.serve(world.store, world.token_file)
        procs.agent(world, server.url, interval=args.interval)
        wait_for(lambda: serving_version(server.url) == "2.0.0", what="2.0.0", timeout=300)
        rounds = [one_round(world, server.url) for _ in range(args.rounds)]
        times = [t for t, _ in rounds]
        print(f"rating trigger (min_rating 3.5, min_ratings {args.min_ratings}, min_requests "
              f"{args.min_requests}), agent polling every {args.interval:g} s, toys, "
              f"{args.rounds} rounds")
        print("fault start (2.1.0 serving) -> 2.0.0 answering again: "
              f"p50 {statistics.median(times):.3f} s, p95 {interpolated(times, 95):.3f} s, "
              f"min {min(times):.3f} s, max {max(times):.3f} s; requests per round "
              f"p50 {statistics.median(n for _, n in rounds):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
