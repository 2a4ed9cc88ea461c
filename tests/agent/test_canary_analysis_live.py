"""Canary analysis end to end with real processes: `ggufops serve` + `ggufops agent`, a bare
git remote and SeaweedFS, toy models (and SmolLM2) under real traffic, a short interval.
A good canary walks 10 -> 25 -> 50 and is promoted by commits, exactly one per step with two
hosts on one remote; a 4x slower one is aborted by one commit, and not before it has had
enough traffic, and an agent restarted mid-step resumes the analysis; a canary that gets
too little of the traffic is aborted at its progress deadline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ggufops.llama import toy
from testing.repos import git
from testing.runtime import MODEL, Proc, Processes, World, get, http, serving, wait_for
from testing.toys import TOY_DIR
from testing.traffic import traffic

STEPS = [10, 25, 50, 100]


@pytest.fixture(scope="module")
def slow() -> Path:
    """The `slow` toy: baseline's answers about 4x slower (slow2x, 1.5x slower in generation
    with a cached prompt, sits on the 1.5 limit itself: a coin toss under load)."""
    return toy.build_toy_set(TOY_DIR, names=["slow"])["slow"]


def _set_policy(world: World, **rules: Any) -> None:
    path = world.repo / "registry" / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["canary_analysis"] = {"production": rules}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


def _deploy_planned_canary(world: World, version: str, steps: list[int],
                           interval: float) -> str:
    """What `ggufops deploy NAME@version --canary S0 --steps ... --direct --push` writes."""
    entry = {"version": "2.0.0", "canary": {"version": version, "weight": steps[0],
                                            "analysis": {"steps": steps, "interval": interval}}}
    path = world.repo / "environments" / "production.yaml"
    path.write_text(yaml.safe_dump({"environment": "production", "models": {MODEL: entry}},
                                   sort_keys=False))
    return world.push(f"deploy(production): {MODEL} canary {version} ({steps[0]}%)")


def _start(world: World, processes: Processes, name: str) -> tuple[Proc, Proc]:
    server = processes.serve(world.store.parent / f"store-{name}", world.token_file)
    agent = _agent(world, processes, server, name)
    wait_for(lambda: serving(server.url).get(MODEL, {}).get("version") == "2.0.0",
             timeout=120, what="2.0.0 served")
    return server, agent


def _agent(world: World, processes: Processes, server: Proc, name: str) -> Proc:
    store, state = world.store.parent / f"store-{name}", world.state_dir.parent / f"state-{name}"
    return processes.agent(world, server.url, extra=[
        "--store", str(store), "--state-dir", str(state), "--host-name", name])


def _decisions(world: World, since: str) -> list[tuple[str, str]]:
    """(subject, Canary-Analysis) of every commit on the remote after `since`, oldest first."""
    log = git(world.remote, "log", "--reverse", "--format=%s%x1f%(trailers:key=Canary-Analysis,"
              "valueonly)%x1e", f"{since}..main")
    return [(s.strip(), a.strip()) for s, _, a in
            (r.strip("\n").partition("\x1f") for r in log.split("\x1e") if r.strip())]


def _time(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _applied_head(world: World, agent: Proc) -> bool:
    return get(f"{agent.url}/status")["applied_commit"] == git(world.remote, "rev-parse", "main")


@contextlib.contextmanager
def _hosts(world: World, processes: Processes, names: list[str]) -> Iterator[list[Proc]]:
    """Servers + agents, each server under sequential traffic; yields the agents."""
    started = [_start(world, processes, name) for name in names]
    with contextlib.ExitStack() as stack:
        for server, _ in started:
            stack.enter_context(traffic(server.url))
        yield [agent for _, agent in started]


@pytest.mark.slow
def test_a_good_canary_walks_the_steps_and_is_promoted_once_per_step_by_two_hosts(
        world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    _set_policy(world, min_requests=20)
    world.deploy("2.0.0")
    with _hosts(world, processes, ["host-a", "host-b"]) as agents:
        start = _deploy_planned_canary(world, "2.1.0", STEPS, interval=2)
        wait_for(lambda: any(s.startswith("promote(") for s, _ in _decisions(world, start)),
                 timeout=600, what="the promotion")
        wait_for(lambda: all(_applied_head(world, a) for a in agents), timeout=120,
                 what="both hosts on the promotion")
    decisions = _decisions(world, start)
    assert [s for s, _ in decisions] == [
        f"canary-step(production): {MODEL} canary 2.1.0 10% -> 25%",
        f"canary-step(production): {MODEL} canary 2.1.0 25% -> 50%",
        f"promote(production): {MODEL} 2.0.0 -> 2.1.0 (canary analysis)"]
    for _, analysis in decisions:
        assert analysis.startswith("verdict=pass requests=")
        canary, primary = analysis.split("requests=")[1].split()[0].split("/")
        assert int(canary) >= 20 and int(primary) >= 20
        assert analysis.split(" host=")[1] in {"host-a", "host-b"}
    env = yaml.safe_load(git(world.remote, "show", "main:environments/production.yaml"))
    assert env["models"][MODEL] == {"version": "2.1.0"}
    events = [e for a in agents for e in get(f"{a.url}/status")["canary_analysis"]["events"]]
    assert [e["outcome"] for e in events].count("pushed") == 3
    assert {e["outcome"] for e in events} <= {"pushed", "converged"}


@pytest.mark.slow
def test_a_slow_canary_waits_for_traffic_then_is_aborted_by_one_commit(
        world: World, processes: Processes, slow: Path) -> None:
    world.models["slow"] = slow
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "slow")
    _set_policy(world, min_requests=20, progress_deadline=3600)  # far: the step waits
    world.deploy("2.0.0")
    server, agent = _start(world, processes, "host-a")
    start = _deploy_planned_canary(world, "2.1.0", STEPS, interval=1)
    wait_for(lambda: _applied_head(world, agent), timeout=120, what="the canary applied")
    last = wait_for(lambda: get(f"{agent.url}/status")["canary_analysis"]["analysing"]
                    [MODEL]["last"], timeout=60, what="an analysis without traffic")
    assert last["outcome"] == "wait" and "too few requests: 0 canary" in last["note"]
    assert git(world.remote, "rev-parse", "main") == start  # no traffic: no step

    # only the agent restarts mid-step: nothing is applied again (the server is in sync),
    # and the analysis resumes from the applied commit, with the step's time from git
    step = get(f"{agent.url}/status")["canary_analysis"]["analysing"][MODEL]
    # counted from the step's due time, or from when this host began serving it if later
    assert 3600 <= _time(step["deadline"]) - _time(step["due"]) < 3600 + 120
    assert agent.stop() == 0
    agent = _agent(world, processes, server, "host-a")
    resumed = wait_for(lambda: get(f"{agent.url}/status")["canary_analysis"]["analysing"]
                       .get(MODEL), timeout=60, what="the analysis resumed")
    assert resumed["step_started"] == step["step_started"] and resumed["weight"] == 10
    # the deadline's clock is where it was: when this host first served the step, read back
    # from the apply log (the server, and its request window, kept running)
    assert resumed["deadline"] == step["deadline"]

    # 32 tokens: the slow toy's compute (about 8x), not the noise of scheduling a
    # millisecond request on a busy machine, sets both p95s, and the tail test sees it
    with traffic(server.url, max_tokens=32) as sender:
        wait_for(lambda: _decisions(world, start), timeout=600, what="the abort")
        wait_for(lambda: _applied_head(world, agent), timeout=120, what="the abort applied")
    ((subject, analysis),) = _decisions(world, start)
    assert subject == f"abort(production): {MODEL} canary 2.1.0 removed (canary analysis)", \
        analysis
    assert analysis.startswith("verdict=fail metric=p95_ratio requests=")
    assert float(analysis.split(" p95_ratio=")[1].split()[0]) > 1.5
    message = git(world.remote, "log", "-1", "--format=%B", "main")
    assert f"Rollback-Of: {start}" in message and "Canary-Step: 0" in message
    assert "canary" not in serving(server.url)[MODEL] or \
        serving(server.url)[MODEL]["canary"] is None
    assert set(sender.statuses) == {200}


@pytest.mark.slow
def test_a_step_that_cannot_be_judged_in_time_is_aborted_at_its_progress_deadline(
        world: World, processes: Processes) -> None:
    """40 requests: the primary gets its 20 (min_requests: the host is in rotation), the
    10% canary a few (20 of 40 at 10% has a chance below 1e-9), too few to judge: past the
    deadline, one abort commit."""
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    _set_policy(world, min_requests=20, progress_deadline=2)
    world.deploy("2.0.0")
    server, agent = _start(world, processes, "host-a")
    start = _deploy_planned_canary(world, "2.1.0", STEPS, interval=1)
    wait_for(lambda: _applied_head(world, agent), timeout=120, what="the canary applied")
    assert serving(server.url)[MODEL]["canary"]["version"] == "2.1.0"
    shown = [http("POST", f"{server.url}/v1/completions",
                  {"model": MODEL, "prompt": "def f(x):", "max_tokens": 4})[1]["model"]
             for _ in range(40)]
    canary = sum("-v2.1.0-" in m for m in shown)
    assert canary < 20 <= 40 - canary, shown
    wait_for(lambda: _decisions(world, start), timeout=120, what="the abort")
    wait_for(lambda: _applied_head(world, agent), timeout=120, what="the abort applied")
    ((subject, analysis),) = _decisions(world, start)
    assert subject == f"abort(production): {MODEL} canary 2.1.0 removed (canary analysis)"
    assert analysis.startswith("verdict=fail metric=progress_deadline requests="), analysis
    # judged once the primary had its 20, maybe before the 40 were all sent
    judged_c, judged_p = map(int, analysis.split("requests=")[1].split()[0].split("/"))
    assert judged_c <= canary and 20 <= judged_p <= 40 - canary, analysis
    message = git(world.remote, "log", "-1", "--format=%B", "main")
    assert f"Rollback-Of: {start}" in message and "progress_deadline 2s" in message
    (event,) = get(f"{agent.url}/status")["canary_analysis"]["events"]
    assert (event["kind"], event["outcome"]) == ("abort", "pushed")
    assert event["verdict"]["window_s"] >= 3  # due after 1 s, then 2 s past it
    assert serving(server.url)[MODEL].get("canary") is None
    assert serving(server.url)[MODEL]["version"] == "2.0.0"


@pytest.mark.slow
def test_a_good_canary_of_the_real_smollm2_is_promoted(world: World, processes: Processes,
                                                       smollm2: Path,
                                                       smollm2_relabelled_copy: Path) -> None:
    """The promise on a real model: 2.1.0 is SmolLM2 under another name (the same weights
    and speed, another file); at 50% it compares well and is promoted by one commit."""
    world.models.update(smollm2=smollm2, smollm2_copy=smollm2_relabelled_copy)
    world.publish("2.0.0", "smollm2")
    world.publish("2.1.0", "smollm2_copy")
    _set_policy(world, min_requests=20)
    world.deploy("2.0.0")
    server, agent = _start(world, processes, "host-a")
    with traffic(server.url, max_tokens=4) as sender:
        start = _deploy_planned_canary(world, "2.1.0", [50, 100], interval=2)
        wait_for(lambda: _decisions(world, start), timeout=600, what="the decision")
        wait_for(lambda: _applied_head(world, agent), timeout=120, what="the promotion applied")
        wait_for(lambda: serving(server.url)[MODEL]["version"] == "2.1.0", timeout=120,
                 what="2.1.0 serving")
    ((subject, analysis),) = _decisions(world, start)
    assert subject == f"promote(production): {MODEL} 2.0.0 -> 2.1.0 (canary analysis)"
    assert analysis.startswith("verdict=pass requests=")
    assert sender.count("2.1.0") >= 20 and set(sender.statuses) == {200}
