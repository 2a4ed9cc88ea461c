"""What an idle sync agent costs: CPU (% of one core) and RSS over 60 s at a 1 s interval.

The agent has applied a model (so its S3 client has been imported and used) and then
only watches: one `git ls-remote` and one GET /v1/models per second. CPU includes the
git processes it starts (children's CPU time). Goal (issue 6): under 1% and under 80 MB.

    .venv/bin/python -m bench.bench_agent_idle [--seconds 60] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

from testing.runtime import get, serving_version, standalone_world, wait_for


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, \
            standalone_world(Path(tmp)) as (world, procs):
        world.publish("2.0.0", "baseline")
        world.deploy("2.0.0")
        server = procs.serve(world.store, world.token_file)
        agent = procs.agent(world, server.url, interval=args.interval)
        wait_for(lambda: serving_version(server.url) == "2.0.0", what="the deploy")
        wait_for(lambda: get(f"{agent.url}/status")["phase"] == "healthy", what="healthy")
        proc = psutil.Process(agent.proc.pid)
        time.sleep(2 * args.interval)  # settle
        checks_before = checks(agent.url)
        cpu0, wall0 = cpu_seconds(proc), time.monotonic()
        rss = []
        while time.monotonic() - wall0 < args.seconds:
            rss.append(proc.memory_info().rss / 2**20)
            time.sleep(1.0)
        cpu = (cpu_seconds(proc) - cpu0) / (time.monotonic() - wall0) * 100
        n = checks(agent.url) - checks_before
        print(f"idle agent over {args.seconds:.0f} s at a {args.interval:g} s interval "
              f"({n:.0f} remote checks)")
        print(f"CPU: {cpu:.2f}% of one core (agent + its git processes)   goal < 1%: "
              f"{'met' if cpu < 1 else 'NOT met'}")
        print(f"RSS: max {max(rss):.1f} MB, mean {sum(rss) / len(rss):.1f} MB   goal < 80 MB: "
              f"{'met' if max(rss) < 80 else 'NOT met'}")
    return 0


def checks(url: str) -> float:
    from testing.runtime import metrics

    return metrics(url).get('ggufops_agent_remote_checks_total{result="ok"}', 0.0)


if __name__ == "__main__":
    sys.exit(main())
