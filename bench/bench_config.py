"""Config-only change vs model swap, through the sync agent, in the same run.

Each round pushes a commit and sends POST /sync, then times until /v1/models shows it:
  config change  only `overrides.max_tokens` changes (3 <-> 9): the server swaps the config,
                 no load (`config_sha256` changes, `loaded_at` does not)
  model swap     the version changes (2.0.0 <-> 2.1.0, both already in the store): a load
Then, on the server alone, the admin call that applies each (POST /admin/models), which is
the part the issue's 50 ms goal is about. Toy models (a swap of a real model adds its load
time, 4.6 s for SmolLM2). Real SeaweedFS, git with a bare remote, `ggufops serve` and
`ggufops agent`.

    .venv/bin/python -m bench.bench_config [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ggufops.percentile import interpolated
from ggufops.registry.registry import display_id
from testing.runtime import (
    MODEL,
    TOKEN,
    Proc,
    World,
    get,
    http,
    serving,
    standalone_world,
    wait_for,
)


def push_entry(world: World, entry: dict[str, Any]) -> str:
    body = {"environment": "production", "models": {MODEL: entry}}
    (world.repo / "environments" / "production.yaml").write_text(
        "# production\n" + yaml.safe_dump(body, sort_keys=False))
    return world.push(f"production: {entry}")


def timed_change(world: World, server: Proc, agent: Proc, entry: dict[str, Any],
                 key: str) -> float:
    """Seconds from the push of `entry` until /v1/models changes its `key`."""
    old = serving(server.url)[MODEL][key]
    start = time.perf_counter()
    commit = push_entry(world, entry)
    http("POST", f"{agent.url}/sync")
    wait_for(lambda: serving(server.url)[MODEL][key] != old, interval=0.002, what=key)
    elapsed = time.perf_counter() - start
    wait_for(lambda: get(f"{agent.url}/status")["applied_commit"] == commit, what="applied")
    return elapsed


def admin_times(server: Proc, world: World, rounds: int
                ) -> tuple[list[float], list[float], list[float]]:
    """POST /admin/models round trips: the same request again (no change: the HTTP and
    parsing baseline), a config change, and a load of another version."""
    docs = {v: world.docs[f"{MODEL}@{v}"] for v in ("2.0.0", "2.1.0")}

    def body(version: str, max_tokens: int) -> dict[str, Any]:
        doc = docs[version]
        return {"name": MODEL, "version": version, "sha256": doc["artifact"]["sha256"],
                "display_id": display_id(doc),
                "inference": {**doc["inference"], "max_tokens": max_tokens}}

    config, swap, same = [], [], []
    http("POST", f"{server.url}/admin/models", body("2.0.0", 3), token=TOKEN)
    for i in range(rounds):
        start = time.perf_counter()
        status, _ = http("POST", f"{server.url}/admin/models", body("2.0.0", 4 - i % 2),
                         token=TOKEN)
        config.append(time.perf_counter() - start)
        assert status == 200
        start = time.perf_counter()
        status, _ = http("POST", f"{server.url}/admin/models", body("2.0.0", 4 - i % 2),
                         token=TOKEN)
        same.append(time.perf_counter() - start)
        assert status == 200
    for i in range(rounds):
        start = time.perf_counter()
        status, _ = http("POST", f"{server.url}/admin/models",
                         body("2.1.0" if i % 2 == 0 else "2.0.0", 3), token=TOKEN)
        swap.append(time.perf_counter() - start)
        assert status == 201
    return config, swap, same


def row(label: str, times: list[float]) -> str:
    return (f"{label:<30}{statistics.median(times) * 1000:>9.1f}"
            f"{interpolated(times, 95) * 1000:>9.1f}{max(times) * 1000:>9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-config-") as tmp, \
            standalone_world(Path(tmp)) as (world, procs):
        world.publish("2.0.0", "baseline")
        world.publish("2.1.0", "improved")
        push_entry(world, {"version": "2.1.0"})
        server = procs.serve(world.store, world.token_file)
        agent = procs.agent(world, server.url, interval=30.0)  # /sync drives every change
        http("POST", f"{agent.url}/sync")
        wait_for(lambda: serving(server.url).get(MODEL, {}).get("version") == "2.1.0",
                 what="2.1.0 served")
        push_entry(world, {"version": "2.0.0"})
        http("POST", f"{agent.url}/sync")  # both artifacts in the store from here on
        wait_for(lambda: serving(server.url)[MODEL]["version"] == "2.0.0", what="2.0.0")
        config, swap = [], []
        for i in range(args.rounds):
            config.append(timed_change(world, server, agent, {
                "version": "2.0.0", "overrides": {"max_tokens": 9 if i % 2 == 0 else 3}},
                "config_sha256"))
        for i in range(args.rounds):
            swap.append(timed_change(world, server, agent, {
                "version": "2.1.0" if i % 2 == 0 else "2.0.0", "overrides": {"max_tokens": 3}},
                "version"))
        procs.started.remove(agent)
        agent.stop()  # the admin timings below must not race the agent
        admin_config, admin_swap, admin_same = admin_times(server, world, args.rounds)
        print(f"config-only change vs model swap (toy models), {args.rounds} rounds each")
        print(f"{'what':<30}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
        print(row("push -> served: config", config))
        print(row("push -> served: model swap", swap))
        print(row("POST /admin/models: no change", admin_same))
        print(row("POST /admin/models: config", admin_config))
        print(row("POST /admin/models: swap", admin_swap))
        ratio = statistics.median(config) / statistics.median(swap)
        print(f"push -> served, config p50 / swap p50: {ratio:.2f}x")
        p95 = interpolated(admin_config, 95) * 1000
        extra = (statistics.median(admin_config) - statistics.median(admin_same)) * 1000
        print(f"config apply over the no-change round trip: p50 +{extra:.1f} ms; "
              f"round trip p95 {p95:.1f} ms: goal <= 50 ms {'met' if p95 <= 50 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
