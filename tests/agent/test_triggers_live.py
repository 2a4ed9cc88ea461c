"""Rollback triggers end to end with real processes: `ggufops serve` + `ggufops agent`, a
bare git remote and SeaweedFS, toy models and real traffic. A much slower version (p95) and
a version users rate low are each rolled back by the agent, with no person acting; two
hosts on one remote push exactly one revert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ggufops.llama import toy
from testing.repos import git
from testing.runtime import (
    MODEL,
    Proc,
    Processes,
    World,
    get,
    metrics,
    serving_version,
    wait_for,
)
from testing.toys import TOY_DIR
from testing.traffic import Traffic, traffic
from testing.webhook import webhook_receiver

PROMOTIONS = f'ggufops_standby_promotions_total{{model="{MODEL}"}}'
SECRET = b"notify-secret-for-tests"


@pytest.fixture(scope="module")
def slow2x() -> Path:
    return toy.build_toy_set(TOY_DIR, names=["slow2x"])["slow2x"]


def _set_triggers(world: World, **rules: Any) -> None:
    path = world.repo / "registry" / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["rollback_triggers"] = {"production": rules}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


def _start(world: World, processes: Processes, name: str,
           extra: list[str] | None = None) -> tuple[Proc, Proc]:
    store, state = world.store.parent / f"store-{name}", world.state_dir.parent / f"state-{name}"
    server = processes.serve(store, world.token_file)
    agent = processes.agent(world, server.url, extra=[
        "--store", str(store), "--state-dir", str(state), "--host-name", name, *(extra or [])])
    wait_for(lambda: serving_version(server.url) == "2.0.0", timeout=120, what="2.0.0 served")
    return server, agent


def _trigger_commits(world: World) -> list[str]:
    return git(world.remote, "log", "--format=%H", "--grep", "^Rollback-Trigger:",
               "main").split()


def _rolled_back(world: World, server: Proc, agent: Proc) -> bool:
    reverts = _trigger_commits(world)
    return bool(reverts) and serving_version(server.url) == "2.0.0" \
        and get(f"{agent.url}/status")["applied_commit"] == reverts[0]


def _deploy_under_traffic(world: World, senders: list[Traffic], baseline_requests: int) -> str:
    wait_for(lambda: all(t.count("2.0.0") >= baseline_requests for t in senders),
             timeout=120, what="baseline traffic")
    return world.deploy("2.1.0")


def _check_revert(world: World, deploy: str, metric: str, hosts: set[str]) -> str:
    (revert,) = _trigger_commits(world)
    message = git(world.remote, "log", "-1", "--format=%B", revert)
    assert f"Rollback-Of: {deploy}" in message
    assert "From-Version: 2.1.0" in message and "To-Version: 2.0.0" in message
    trailer = next(line for line in message.splitlines()
                   if line.startswith("Rollback-Trigger: "))
    assert trailer.startswith(f"Rollback-Trigger: metric={metric} value=")
    assert trailer.split(" host=")[1] in hosts
    return trailer


@pytest.mark.slow
def test_a_much_slower_version_is_rolled_back_on_p95(world: World, processes: Processes,
                                                     slow2x: Path) -> None:
    world.models["slow2x"] = slow2x
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "slow2x")
    _set_triggers(world, window_s=120, min_requests=15, p95_ratio=1.5)
    world.deploy("2.0.0")
    secret = world.state_dir.parent / "notify-secret"
    secret.write_bytes(SECRET)
    with webhook_receiver(SECRET) as hook:
        server, agent = _start(world, processes, "host-a", [
            "--notify-url", hook.url, "--notify-secret-file", str(secret)])
        with traffic(server.url) as sender:
            deploy = _deploy_under_traffic(world, [sender], baseline_requests=20)
            wait_for(lambda: _rolled_back(world, server, agent), timeout=180,
                     what="auto rollback")
        wait_for(lambda: hook.received, what="the notification")
    (note,) = hook.received
    assert note.signed_ok
    assert {k: json.loads(note.body)[k] for k in ("metric", "outcome", "host", "version")} == \
        {"metric": "p95_ratio", "outcome": "pushed", "host": "host-a", "version": "2.1.0"}
    trailer = _check_revert(world, deploy, "p95_ratio", {"host-a"})
    assert float(trailer.split("value=")[1].split()[0]) > 1.5
    assert sender.count("2.1.0") >= 15 and set(sender.statuses) == {200}
    (event,) = get(f"{agent.url}/status")["triggers"]["events"]
    assert (event["metric"], event["outcome"], event["version"]) == \
        ("p95_ratio", "pushed", "2.1.0")
    assert metrics(server.url)[PROMOTIONS] == 1  # the hot standby: a pointer swap


@pytest.mark.slow
def test_low_ratings_roll_back_exactly_once_across_two_hosts(world: World,
                                                            processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    _set_triggers(world, window_s=120, min_requests=5, min_rating=3.5, min_ratings=5)
    world.deploy("2.0.0")
    hosts = [_start(world, processes, name) for name in ("host-a", "host-b")]
    with traffic(hosts[0][0].url, "2.1.0") as a, traffic(hosts[1][0].url, "2.1.0") as b:
        deploy = _deploy_under_traffic(world, [a, b], baseline_requests=3)
        wait_for(lambda: all(_rolled_back(world, s, g) for s, g in hosts), timeout=180,
                 what="auto rollback on both hosts")
    _check_revert(world, deploy, "rating", {"host-a", "host-b"})
    events = [e for _, agent in hosts for e in get(f"{agent.url}/status")["triggers"]["events"]]
    assert [e["outcome"] for e in events].count("pushed") == 1
    assert {e["outcome"] for e in events} <= {"pushed", "converged"}
    assert all(set(t.statuses) == {200} for t in (a, b))
