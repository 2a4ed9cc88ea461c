"""Rollback triggers end to end with real processes: `ggufops serve` + `ggufops agent`, a
bare git remote and SeaweedFS, toy models and real traffic. A much slower version (p95) and
a version users rate low are each rolled back by the agent, with no person acting; two
hosts on one remote push exactly one revert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from gguf import GGUFReader

from ggufops.llama import toy
from testing.repos import git
from testing.runtime import (
    MODEL,
    Proc,
    Processes,
    World,
    get,
    http,
    metrics,
    serving_version,
    wait_for,
)
from testing.signing import allowed_signers, make_key, sign_with, signature
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


@pytest.mark.slow
def test_a_restarted_agent_still_watches_the_version_it_deployed(world: World,
                                                                processes: Processes) -> None:
    """The agent restarts after 2.1.0 is applied (an upgrade, a host reboot): it watches
    2.1.0 again from when it came, and low ratings that arrive after the restart still roll
    it back."""
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    _set_triggers(world, window_s=120, min_requests=5, min_rating=3.5, min_ratings=5)
    world.deploy("2.0.0")
    server, agent = _start(world, processes, "host-a")
    deploy = world.deploy("2.1.0")
    wait_for(lambda: get(f"{agent.url}/status")["applied_commit"] == deploy, timeout=120,
             what="2.1.0 applied")
    before = get(f"{agent.url}/status")["triggers"]["watching"]
    assert (before[MODEL]["version"], before[MODEL]["previous"]) == ("2.1.0", "2.0.0")
    agent.stop()
    state = world.state_dir.parent / "state-host-a"
    agent = processes.agent(world, server.url, extra=[
        "--store", str(world.store.parent / "store-host-a"), "--state-dir", str(state),
        "--host-name", "host-a"])
    wait_for(lambda: get(f"{agent.url}/status")["triggers"]["watching"] == before,
             timeout=60, what="the same watch, from the same time, after the restart")
    with traffic(server.url, "2.1.0") as sender:
        wait_for(lambda: _rolled_back(world, server, agent), timeout=180, what="auto rollback")
    _check_revert(world, deploy, "rating", {"host-a"})
    assert sender.count("2.1.0") >= 5

@pytest.mark.slow
def test_an_agent_with_trust_applies_the_revert_it_signed_itself(world: World,
                                                                 processes: Processes) -> None:
    keys = world.state_dir.parent / "keys"
    alice, agent_key = make_key(keys, "alice@example.invalid"), make_key(keys, "host-a@agents")
    allowed = allowed_signers(keys / "allowed_signers", alice, agent_key)
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    _set_triggers(world, window_s=120, min_requests=5, min_rating=3.5, min_ratings=5)
    sign_with(world.repo, alice)
    world.deploy("2.0.0")
    server, agent = _start(world, processes, "host-a", [
        "--trust", str(allowed), "--push-url", str(world.remote),
        "--signing-key", str(agent_key.private)])
    assert "signed commits only" in agent.banner
    with traffic(server.url, "2.1.0") as sender:
        _deploy_under_traffic(world, [sender], baseline_requests=3)
        wait_for(lambda: _rolled_back(world, server, agent), timeout=180, what="auto rollback")
    (revert,) = _trigger_commits(world)
    assert signature(world.remote, revert, allowed) == ("G", "host-a@agents")
    status = get(f"{agent.url}/status")
    assert (status["phase"], status["refused_commit"], status["refused_reason"]) == \
        ("healthy", None, None)


SHORT_CONTEXT = 128  # tokens


@pytest.fixture(scope="module")
def smollm2_short_context(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a careless re-conversion leaves it: the same weights, but a header that says
    `llama.context_length` 128 (trained: 8192). The server sizes a model's context from its
    header, so prompts longer than 128 tokens fail (400: "the prompt has N tokens but the
    context holds 128") while short ones are answered."""
    out = tmp_path_factory.mktemp("smollm2-ctx") / "smollm2-ctx128.gguf"
    shutil.copy(smollm2, out)
    reader = GGUFReader(out, "r+")
    field = reader.fields["llama.context_length"]
    field.parts[field.data[0]][...] = SHORT_CONTEXT
    reader.data.flush()
    del reader, field
    return out


@pytest.mark.slow
def test_smollm2_failing_long_prompts_is_rolled_back_on_error_rate(
        world: World, processes: Processes, smollm2: Path, smollm2_short_context: Path) -> None:
    world.models.update(smollm2=smollm2, smollm2_ctx128=smollm2_short_context)
    world.publish("2.0.0", "smollm2")
    world.publish("2.1.0", "smollm2_ctx128")
    _set_triggers(world, window_s=300, min_requests=8, error_rate=0.05)
    world.deploy("2.0.0")
    server, agent = _start(world, processes, "host-a")
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 20  # about 200 tokens
    prompts = ("Hello, my name is", "The capital of France is", "Once upon a time",
               long_prompt)
    with traffic(server.url, prompts=prompts) as sender:
        deploy = _deploy_under_traffic(world, [sender], baseline_requests=4)
        wait_for(lambda: _rolled_back(world, server, agent), timeout=300, what="auto rollback")
    trailer = _check_revert(world, deploy, "error_rate", {"host-a"})
    assert float(trailer.split("value=")[1].split()[0]) > 0.05
    assert sender.failures, "no request failed"
    for status, prompt, error in sender.failures:  # only the long prompt failed, and why
        assert (status, prompt) == (400, long_prompt)
        assert "tokens but the context holds 128; shorten the prompt" in error, error
    assert sender.count("2.1.0") >= 1  # short prompts were answered by the bad version
    status, reply = http("POST", f"{server.url}/v1/completions",
                         {"model": MODEL, "prompt": long_prompt, "max_tokens": 8})
    assert status == 200 and "-v2.0.0-" in reply["model"]  # the old version answers it again
    assert metrics(server.url)[PROMOTIONS] == 1
