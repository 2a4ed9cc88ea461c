"""The sync agent: real git (bare remote), real SeaweedFS, real `ggufops serve` + llama.cpp.

The end-to-end tests run `ggufops serve` and `ggufops agent` as subprocesses and change
production only through git, as a person would."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ggufops import git
from ggufops.agent import loop as agent
from ggufops.agent import plan as agentplan
from ggufops.agent.applylog import StoredArtifact
from ggufops.agent.retention import evictable, remember_desired
from ggufops.errors import GitError, InvalidDesiredState, UsageError
from ggufops.hashing import file_sha256
from testing.repos import git_commit, set_environment, write_version
from testing.runtime import (
    GGUFOPS,
    MODEL,
    Proc,
    Processes,
    ThrottledProxy,
    World,
    get,
    http,
    metrics,
    serving,
    serving_version,
    wait_for,
)

# --- git, plan and config (no servers) ----------------------------------------------------


def test_ls_remote_and_mirror_fetch(registry_with_remote: tuple[Path, Path],
                                    tmp_path: Path) -> None:
    repo, remote = registry_with_remote
    head = git.out(["rev-parse", "HEAD"], repo)
    assert git.ls_remote(str(remote), "main") == head
    mirror = tmp_path / "state" / "mirror.git"
    assert git.mirror_fetch(mirror, str(remote), "main") == head
    git_commit(repo, "another")
    git.run(["push", "-q", "origin", "main"], repo)
    newer = git.out(["rev-parse", "HEAD"], repo)
    assert git.mirror_fetch(mirror, str(remote), "main") == newer  # an existing mirror
    with pytest.raises(GitError, match="no branch 'nope'"):
        git.ls_remote(str(remote), "nope")
    with pytest.raises(GitError, match="is unreachable"):
        git.ls_remote(str(tmp_path / "missing.git"), "main")


def plan_at(repo: Path, remote: Path, tmp: Path, keep: int | None = None) -> agentplan.Plan:
    commit = git_commit(repo, "change")
    git.run(["push", "-q", "origin", "main"], repo)
    mirror = tmp / "mirror.git"
    fetched = git.mirror_fetch(mirror, str(remote), "main")
    assert fetched == commit
    tree = agentplan.export_tree(mirror, commit, tmp / "trees")
    return agentplan.plan_from_tree(tree, commit, "production", keep)


def test_plan_reads_the_environment_at_a_commit(registry_with_remote: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    repo, remote = registry_with_remote
    write_version(repo, "m", "1.0.0", content=b"one")
    write_version(repo, "m", "1.1.0", parent="1.0.0", content=b"two")
    env = set_environment(repo, "production", {"m": "1.1.0"})
    env.write_text(env.read_text() + "    overrides: {temperature: 0.2}\n")
    plan = plan_at(repo, remote, tmp_path)
    target = plan.targets["m"]
    assert (target.version, target.display_id) == ("1.1.0", "m-v1.1.0-q8_0")
    assert target.sha256 == __import__("hashlib").sha256(b"two").hexdigest()
    assert target.inference["temperature"] == 0.2  # the environment's override
    assert target.inference["prompt_template"] == "chatml"
    assert plan.keep == 3  # policy retention.agent_keep_last
    assert plan_at(repo, remote, tmp_path, keep=5).keep == 5
    assert sorted(p.name for p in (tmp_path / "trees").iterdir())[0] != ".tmp"


def test_plan_carries_the_canary(registry_with_remote: tuple[Path, Path],
                                 tmp_path: Path) -> None:
    repo, remote = registry_with_remote
    write_version(repo, "m", "1.0.0", content=b"one")
    write_version(repo, "m", "1.1.0", parent="1.0.0", content=b"two")
    env = set_environment(repo, "production", {"m": "1.0.0"})
    env.write_text(env.read_text() + "    canary: {version: 1.1.0, weight: 10}\n"
                   "    overrides: {temperature: 0.2}\n")
    plan = plan_at(repo, remote, tmp_path)
    target = plan.targets["m"]
    canary = target.canary
    assert canary is not None and target.weight is None
    assert (canary.version, canary.weight, canary.size) == ("1.1.0", 10, 3)
    assert canary.sha256 == __import__("hashlib").sha256(b"two").hexdigest()
    assert canary.inference["temperature"] == 0.2
    assert [a.version for a in plan.artifacts()] == ["1.0.0", "1.1.0"]
    request = plan.requests()["m"]
    assert request["canary"]["role"] == "canary" and request["canary"]["weight"] == 10
    assert "canary" not in target.load_body() and "role" not in target.load_body()
    assert agentplan.Target.from_request("m", request) == dataclasses.replace(
        target, dvc_md5="", size=0, canary=dataclasses.replace(canary, dvc_md5="", size=0))
    entry = {"version": "1.0.0", "sha256": target.sha256}
    assert not target.served_by(entry)
    assert target.served_by({**entry, "canary": {"version": "1.1.0", "sha256": canary.sha256,
                                                 "weight": 10}})
    assert not target.served_by({**entry, "canary": {"version": "1.1.0",
                                                     "sha256": canary.sha256, "weight": 20}})


def test_an_invalid_state_is_refused(registry_with_remote: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    repo, remote = registry_with_remote
    write_version(repo, "m", "1.0.0", content=b"one")
    set_environment(repo, "production", {"m": "9.9.9"})
    with pytest.raises(InvalidDesiredState, match=r"is invalid: .*m@9\.9\.9.*not registered"):
        plan_at(repo, remote, tmp_path)
    (repo / "environments" / "production.yaml").unlink()
    with pytest.raises(InvalidDesiredState):
        plan_at(repo, remote, tmp_path)


def test_a_policy_number_no_rule_can_use_is_refused_with_its_line(
        registry_with_remote: tuple[Path, Path], tmp_path: Path) -> None:
    repo, remote = registry_with_remote
    write_version(repo, "m", "1.0.0", content=b"one")
    set_environment(repo, "production", {"m": "1.0.0"})
    policy = repo / "registry" / "policy.yaml"
    line = len(policy.read_text().splitlines()) + 3  # of p95_ratio, appended below
    policy.write_text(policy.read_text() + "rollback_triggers:\n  production:\n"
                      "    p95_ratio: .inf\n")
    with pytest.raises(InvalidDesiredState,
                       match=rf"is invalid: registry/policy\.yaml:{line}:16: "
                             r"'\.inf' is not a finite number"):
        plan_at(repo, remote, tmp_path)


def test_config_is_checked(tmp_path: Path) -> None:
    base: dict[str, Any] = {"repo_url": "/r", "env": "production", "store": tmp_path,
                            "server_url": "http://127.0.0.1:1", "state_dir": tmp_path}
    with pytest.raises(UsageError, match="--keep"):
        agent.AgentConfig(**base, keep=1).check()
    with pytest.raises(UsageError, match="not a git URL"):
        agent.AgentConfig(**{**base, "repo_url": "--upload-pack=x"}).check()
    with pytest.raises(UsageError, match="--download-timeout"):
        agent.AgentConfig(**base, download_timeout=0).check()
    with pytest.raises(UsageError, match="--mismatch-retry"):
        agent.AgentConfig(**base, mismatch_retry=-1).check()
    agent.AgentConfig(**base).check()
    shown = agent.AgentConfig(**{**base, "repo_url": "https://bot:tok@h/r.git"}).shown_url
    assert shown == "https://bot:***@h/r.git"


def test_retention_never_evicts_what_a_recent_desired_state_names() -> None:
    def art(model: str, sha: str, used: float) -> StoredArtifact:
        return StoredArtifact(model, sha, f"v-{sha}", used)

    by_model = {"m": [art("m", "d", 4), art("m", "c", 3), art("m", "b", 2), art("m", "a", 1)],
                "n": [art("n", "a", 5)]}
    assert [a.sha256 for a in evictable(by_model, 2, protected=set())] == ["b"]  # a: kept by n
    assert evictable(by_model, 2, protected={"b"}) == []
    assert [a.sha256 for a in evictable(by_model, 1, protected={"c"})] == ["b"]
    history = remember_desired([], ["a"])
    history = remember_desired(history, ["b", "a"])
    assert remember_desired(history, ["a", "b"]) == [["a"], ["a", "b"]]  # same state: no entry
    assert remember_desired(history, ["c"]) == [["a", "b"], ["c"]]  # the last two states


def test_every_host_option_has_a_documented_environment_form() -> None:
    import click

    from ggufops.cli.runtime import agent as agent_command
    from ggufops.cli.runtime import serve as serve_command

    host_page = (Path(__file__).parents[2] / "docs" / "host.md").read_text()
    for command in (agent_command, serve_command):
        for param in command.params:
            if not isinstance(param, click.Option) or param.name == "help":
                continue
            assert isinstance(param.envvar, str), f"{command.name} {param.opts[0]} has no env form"
            assert f"`{param.envvar}`" in host_page, f"{param.envvar} is not in docs/host.md"


# --- end to end ---------------------------------------------------------------------------


def status(agent_proc: Proc) -> dict[str, Any]:
    return dict(get(f"{agent_proc.url}/status"))


def status_if(agent_proc: Proc, *, remote_reachable: bool | None = None,
              server_reachable: bool | None = None, refused_commit: str | None = None,
              desired_canary: str | None = None) -> dict[str, Any] | None:
    """The agent's status if it shows what is asked, else None."""
    s = status(agent_proc)
    if remote_reachable is not None and s["remote"]["reachable"] is not remote_reachable:
        return None
    if server_reachable is not None and s["server"]["reachable"] is not server_reachable:
        return None
    if refused_commit is not None and s["refused_commit"] != refused_commit:
        return None
    if desired_canary is not None and (s["models"].get(MODEL, {}).get("desired_canary")
                                       or {}).get("version") != desired_canary:
        return None
    return s


def wait_healthy(agent_proc: Proc, commit: str | None = None) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        s = status(agent_proc)
        ok = s["phase"] == "healthy" and (commit is None or s["applied_commit"] == commit)
        return s if ok else None

    return wait_for(probe, what=f"agent healthy at {commit}")


def wait_serving(server: Proc, version: str) -> None:
    wait_for(lambda: serving_version(server.url) == version, what=f"{version} served")


def wait_degraded(agent_proc: Proc, text: str, failures: int = 1) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        s = status(agent_proc)
        ok = s["phase"] == "degraded" and text in (s["last_error"] or "") \
            and s["consecutive_failures"] >= failures
        return s if ok else None

    return wait_for(probe, what=f"degraded with {text!r}")


def downloads(agent_proc: Proc) -> float:
    return metrics(agent_proc.url).get("ggufops_agent_downloads_total", 0.0)


def remote_checks(agent_proc: Proc) -> float:
    return metrics(agent_proc.url).get('ggufops_agent_remote_checks_total{result="ok"}', 0.0)


def successful_loads(server: Proc) -> float:
    """Loads of MODEL the server finished (strict: a misspelt series must not read as 0)."""
    return metrics(server.url)[f'ggufops_model_loads_total{{model="{MODEL}",outcome="success"}}']


def when(stamp: str) -> float:
    """An RFC 3339 time of /status as UNIX seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def downloading(agent_proc: Proc, world: World, commit: str) -> dict[str, Any] | None:
    """The status once `commit`'s download has begun (its temp file is in the store)."""
    s = status(agent_proc)
    started = bool(world.store_temp_files())
    return s if s["phase"] == "downloading" and s["desired_commit"] == commit and started \
        else None


def agent_status_cli(world: World) -> dict[str, Any]:
    proc = subprocess.run([str(GGUFOPS), "agent", "status", "--state-dir", str(world.state_dir),
                           "--json", "--limit", "50"], capture_output=True, text=True,
                          check=True)
    return dict(json.loads(proc.stdout))


def start(world: World, processes: Processes, version: str, **agent_args: Any,
          ) -> tuple[Proc, Proc, str]:
    """Deploy `version`, start server and agent, wait until it is served.

    Returns (server, agent, the deploy commit)."""
    commit = world.deploy(version)
    server = processes.serve(world.store, world.token_file)
    agent_proc = processes.agent(world, server.url, **agent_args)
    wait_serving(server, version)
    wait_healthy(agent_proc, commit)
    return server, agent_proc, commit


@pytest.mark.slow
def test_deploy_then_rollback_through_the_agent(world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    world.publish("2.2.0", "degraded")
    server, agent_proc, _ = start(world, processes, "2.0.0", extra=["--keep", "2"])
    c2 = world.deploy("2.1.0")
    wait_serving(server, "2.1.0")
    c3 = world.deploy("2.2.0")
    wait_serving(server, "2.2.0")
    wait_healthy(agent_proc, c3)
    assert world.stored() == {world.sha256("2.1.0"), world.sha256("2.2.0")}  # keep 2
    assert downloads(agent_proc) == 3
    revert = world.revert(c3)  # the rollback: a revert commit
    wait_serving(server, "2.1.0")
    s = wait_healthy(agent_proc, revert)
    assert downloads(agent_proc) == 3  # the previous version was kept: no download
    assert serving(server.url)[MODEL]["sha256"] == world.sha256("2.1.0")
    assert s["models"][MODEL] == {
        "desired_version": "2.1.0", "desired_sha256": world.sha256("2.1.0"),
        "serving_version": "2.1.0", "serving_sha256": world.sha256("2.1.0"), "in_sync": True,
    }  # fmt: skip
    assert s["desired_commit"] == s["applied_commit"] == revert
    assert s["last_error"] is None and s["last_success_at"]
    assert world.stored() == {world.sha256("2.1.0"), world.sha256("2.2.0")}
    text = subprocess.run([str(GGUFOPS), "agent", "status", "--state-dir", str(world.state_dir)],
                          capture_output=True, text=True, check=True).stdout
    assert "phase:           healthy" in text
    assert f"applied commit:  {revert[:12]}" in text
    assert "model llama3-instruct: desired 2.1.0, serving 2.1.0 (ok)" in text
    report = agent_status_cli(world)
    attempts = report["attempts"]
    assert [a["outcome"] for a in attempts] == ["success"] * 4
    assert [a["models"][MODEL]["version"] for a in attempts] == ["2.1.0", "2.2.0", "2.1.0",
                                                                 "2.0.0"]
    assert attempts[0]["commit"] == revert and attempts[2]["commit"] == c2
    assert report["status"]["applied_commit"] == revert


@pytest.mark.slow
@pytest.mark.parametrize("shorter", [False, True], ids=["same-size", "shorter"])
def test_a_corrupted_object_is_refused_and_not_retried_in_a_loop(
        world: World, processes: Processes, shorter: bool) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, applied = start(world, processes, "2.0.0")
    world.corrupt("2.1.0", shorter=shorter)
    world.deploy("2.1.0")
    s = wait_degraded(agent_proc, "--mismatch-retry")
    assert "llama3-instruct-v2.1.0" in s["last_error"]  # a size or a sha256 that differs
    # the bytes in S3 stay wrong until someone fixes them: the next try is 600 s away
    assert when(s["next_retry_at"]) - when(s["last_error_at"]) == pytest.approx(600, abs=1)
    assert s["applied_commit"] == applied
    assert s["models"][MODEL]["serving_version"] == "2.0.0"
    assert serving_version(server.url) == "2.0.0"
    assert world.sha256("2.1.0") not in world.stored()
    assert world.store_temp_files() == []
    checks = remote_checks(agent_proc)
    wait_for(lambda: remote_checks(agent_proc) >= checks + 5, what="five more ticks")
    attempts = agent_status_cli(world)["attempts"]
    assert [(a["outcome"], a["phase"]) for a in attempts[:2]] == [
        ("failed", "downloading"), ("success", "healthy")]  # not retried meanwhile
    http("POST", f"{agent_proc.url}/sync")  # an operator asks: it is tried again at once
    wait_degraded(agent_proc, "--mismatch-retry", failures=2)
    world.publish("2.1.0", "improved")  # the good bytes are pushed again
    http("POST", f"{agent_proc.url}/sync")
    wait_serving(server, "2.1.0")
    wait_healthy(agent_proc)


@pytest.mark.slow
def test_a_version_the_server_cannot_load_is_reported_and_the_old_one_serves(
        world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved", content=b"GGUF but not really a model" * 64)
    server, agent_proc, applied = start(world, processes, "2.0.0")
    world.deploy("2.1.0")
    s = wait_degraded(agent_proc, "server refused to load llama3-instruct-v2.1.0", failures=2)
    assert "HTTP 422" in s["last_error"]
    assert s["applied_commit"] == applied
    assert serving_version(server.url) == "2.0.0"
    # the newest finished attempt: with --backoff-max 1 the next retry may already run
    attempts = [a for a in agent_status_cli(world)["attempts"] if a["outcome"] != "running"]
    assert (attempts[0]["outcome"], attempts[0]["phase"]) == ("failed", "loading")


@pytest.mark.slow
def test_s3_down_during_an_update_degrades_retries_and_recovers(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, _ = start(world, processes, "2.0.0", s3_endpoint=s3_proxy.endpoint)
    s3_proxy.down()
    commit = world.deploy("2.1.0")
    s = wait_degraded(agent_proc, "cannot connect to S3", failures=3)
    assert s["next_retry_at"] is not None
    assert serving_version(server.url) == "2.0.0"
    failed = [a for a in agent_status_cli(world)["attempts"] if a["outcome"] == "failed"]
    assert len(failed) >= 3 and all(a["commit"] == commit for a in failed)
    s3_proxy.up()
    wait_serving(server, "2.1.0")
    s = wait_healthy(agent_proc, commit)
    assert s["consecutive_failures"] == 0 and s["last_error"] is None


@pytest.mark.slow
def test_an_unreachable_git_remote_keeps_serving_and_is_reported(
        world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    server, agent_proc, commit = start(world, processes, "2.0.0")
    hidden = world.remote.with_name("remote-away.git")
    world.remote.rename(hidden)
    s = wait_for(lambda: status_if(agent_proc, remote_reachable=False),
                 what="the remote reported unreachable")
    assert "unreachable" in s["remote"]["error"]
    s = wait_degraded(agent_proc, "unreachable", failures=0)
    assert s["applied_commit"] == commit
    assert serving_version(server.url) == "2.0.0"
    assert metrics(agent_proc.url)['ggufops_agent_remote_checks_total{result="unreachable"}'] >= 1
    hidden.rename(world.remote)
    s = wait_healthy(agent_proc, commit)
    assert s["remote"]["reachable"] is True and s["last_error"] is None


@pytest.mark.slow
def test_an_invalid_environment_commit_is_refused_and_reported(
        world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, applied = start(world, processes, "2.0.0")
    bad = world.deploy("9.9.9")  # never registered
    s = wait_for(lambda: status_if(agent_proc, refused_commit=bad), what="the commit refused")
    assert s["phase"] == "degraded"
    assert "not registered" in s["last_error"] and bad[:12] in s["last_error"]
    assert s["applied_commit"] == applied
    assert serving_version(server.url) == "2.0.0"
    attempts = agent_status_cli(world)["attempts"]
    assert attempts[0]["outcome"] == "refused" and attempts[0]["commit"] == bad
    good = world.deploy("2.1.0")
    wait_serving(server, "2.1.0")
    assert wait_healthy(agent_proc, good)["refused_commit"] is None


@pytest.mark.slow
def test_sigkill_mid_download_then_restart_converges(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, _ = start(world, processes, "2.0.0", s3_endpoint=s3_proxy.endpoint)
    s3_proxy.hold_after(1536 * 1024)  # the download starts and cannot finish
    commit = world.deploy("2.1.0")
    wait_for(lambda: downloading(agent_proc, world, commit), what="a download in progress")
    agent_proc.kill()
    partial = world.store_temp_files()
    assert partial and all(p.stat().st_size < 1536 * 1024 for p in partial)
    assert world.sha256("2.1.0") not in world.stored()
    assert serving_version(server.url) == "2.0.0"  # untouched by the kill
    s3_proxy.resume()
    restarted = processes.agent(world, server.url, s3_endpoint=s3_proxy.endpoint)
    wait_serving(server, "2.1.0")
    wait_healthy(restarted, commit)
    assert world.store_temp_files() == []
    assert file_sha256(world.store / "sha256" / f"{world.sha256('2.1.0')}.gguf") \
        == world.sha256("2.1.0")
    assert serving(server.url)[MODEL]["sha256"] == world.sha256("2.1.0")
    assert downloads(restarted) == 1  # only the interrupted one; 2.0.0 was verified already
    outcomes = [(a["outcome"], a["phase"]) for a in agent_status_cli(world)["attempts"]]
    assert outcomes[0] == ("success", "healthy")
    assert ("interrupted", "downloading") in outcomes
    restarted.stop()
    again = processes.agent(world, server.url, s3_endpoint=s3_proxy.endpoint)
    wait_healthy(again, commit)  # already applied: nothing to download or load
    assert downloads(again) == 0
    assert len(agent_status_cli(world)["attempts"]) == len(outcomes)


# --- the newest desired state wins ----------------------------------------------------------


def rollback_during_a_slow_download(world: World, processes: Processes,
                                    s3_proxy: ThrottledProxy, base: str, newer: str) -> Proc:
    """The probe of issue 15: S3 at 3,000 B/s, a deploy of a version not in the store, then
    the rollback of that deploy while it downloads, and POST /sync; the server."""
    world.publish("2.0.0", base)
    world.publish("2.1.0", newer)
    server, agent_proc, _ = start(world, processes, "2.0.0", s3_endpoint=s3_proxy.endpoint)
    loads = successful_loads(server)
    s3_proxy.rate = 3000  # 2.1.0 would take minutes (the toy) to hours (SmolLM2)
    deploy = world.deploy("2.1.0")
    wait_for(lambda: downloading(agent_proc, world, deploy), what="2.1.0 downloading")
    rollback = world.revert(deploy)
    http("POST", f"{agent_proc.url}/sync")

    s = wait_healthy(agent_proc, rollback)  # S3 is still crawling: nothing waited for it
    assert s["desired_commit"] == s["applied_commit"] == rollback
    assert s["models"][MODEL]["serving_version"] == "2.0.0"
    assert serving_version(server.url) == "2.0.0"
    assert successful_loads(server) == loads  # the superseded 2.1.0 was never loaded
    assert world.sha256("2.1.0") not in world.stored()  # its download was cancelled
    assert world.store_temp_files() == []  # ... and left nothing behind
    assert world.sha256("2.0.0") in world.stored()  # retention kept the rollback target
    assert downloads(agent_proc) == 1
    attempts = agent_status_cli(world)["attempts"]
    assert [(a["commit"], a["outcome"], a["phase"]) for a in attempts[:2]] == [
        (rollback, "success", "healthy"), (deploy, "superseded", "downloading")]
    assert "its download was cancelled" in attempts[1]["error"]
    assert metrics(agent_proc.url)['ggufops_agent_applies_total{outcome="superseded"}'] == 1
    return server


@pytest.mark.slow
def test_a_rollback_pushed_during_a_slow_download_is_served_at_once(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    rollback_during_a_slow_download(world, processes, s3_proxy, "baseline", "improved")


@pytest.mark.slow
def test_a_rollback_during_a_slow_download_of_the_real_smollm2(
        world: World, processes: Processes, s3_proxy: ThrottledProxy, smollm2: Path,
        smollm2_q8_0: Path) -> None:
    world.models.update(smollm2=smollm2, smollm2_q8_0=smollm2_q8_0)
    server = rollback_during_a_slow_download(world, processes, s3_proxy, "smollm2",
                                             "smollm2_q8_0")
    status_code, reply = http("POST", f"{server.url}/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0})
    assert status_code == 200, reply
    assert reply["model"].startswith(f"{MODEL}-v2.0.0-q4_1")
    assert reply["choices"][0]["message"]["content"].strip()


@pytest.mark.slow
def test_a_newer_commit_that_still_needs_the_download_lets_it_finish(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, _ = start(world, processes, "2.0.0", s3_endpoint=s3_proxy.endpoint)
    s3_proxy.hold_after(256 * 1024)
    deploy = world.deploy("2.1.0")
    wait_for(lambda: downloading(agent_proc, world, deploy), what="2.1.0 downloading")
    canary = world.deploy_canary("2.1.0", ("2.0.0", 10))  # still needs 2.1.0
    http("POST", f"{agent_proc.url}/sync")
    s = wait_for(lambda: status_if(agent_proc, desired_canary="2.0.0"),
                 what="the newer state desired")
    assert s["phase"] == "downloading" and s["desired_commit"] == canary
    s3_proxy.resume()

    wait_healthy(agent_proc, canary)
    entry = serving(server.url)[MODEL]
    assert (entry["version"], entry["canary"]["version"], entry["canary"]["weight"]) == (
        "2.1.0", "2.0.0", 10)
    assert downloads(agent_proc) == 2  # 2.1.0 once: its download went on into the store
    attempts = agent_status_cli(world)["attempts"]
    assert [(a["commit"], a["outcome"], a["phase"]) for a in attempts[:2]] == [
        (canary, "success", "healthy"), (deploy, "superseded", "loading")]
    assert "nothing was loaded" in attempts[1]["error"]


@pytest.mark.slow
def test_a_commit_that_leaves_the_environment_alone_does_not_interrupt(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, first = start(world, processes, "2.0.0",
                                      s3_endpoint=s3_proxy.endpoint)
    s3_proxy.hold_after(256 * 1024)
    deploy = world.deploy("2.1.0")
    wait_for(lambda: downloading(agent_proc, world, deploy), what="2.1.0 downloading")
    unrelated = world.push("a change outside production")
    http("POST", f"{agent_proc.url}/sync")
    wait_for(lambda: status(agent_proc)["desired_commit"] == unrelated, what="the new head")
    s3_proxy.resume()
    wait_healthy(agent_proc, unrelated)
    assert serving_version(server.url) == "2.1.0"
    attempts = agent_status_cli(world)["attempts"]  # one apply, adopted by the newer commit
    assert [(a["commit"], a["outcome"]) for a in attempts] == [
        (unrelated, "success"), (first, "success")]
    assert downloads(agent_proc) == 2


@pytest.mark.slow
def test_a_download_past_its_deadline_is_cancelled_and_retried(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, first, applied = start(world, processes, "2.0.0", s3_endpoint=s3_proxy.endpoint)
    # Only then the short deadline: 2.0.0's own download (a DVC child that imports boto3
    # first) could not finish in 3 s on a busy machine, so the test waited for the wrong
    # failure. The restarted agent finds 2.0.0 in its store and downloads nothing.
    assert first.stop() == 0
    agent_proc = processes.agent(world, server.url, s3_endpoint=s3_proxy.endpoint,
                                 extra=["--download-timeout", "3"])
    wait_healthy(agent_proc, applied)
    s3_proxy.hold_after(256 * 1024)  # a stalled transfer: S3 answers, then nothing comes
    world.deploy("2.1.0")
    s = wait_degraded(agent_proc, "did not finish within 3 s (--download-timeout)", failures=2)
    assert "llama3-instruct-v2.1.0" in s["last_error"]
    assert s["applied_commit"] == applied
    assert serving_version(server.url) == "2.0.0"
    assert world.sha256("2.1.0") not in world.stored()
    assert world.store_temp_files() == []  # the cancelled child removed its temp file
    attempts = agent_status_cli(world)["attempts"]
    last = next(a for a in attempts if a["outcome"] != "running")  # a retry may have begun
    assert (last["outcome"], last["phase"]) == ("failed", "downloading")


@pytest.mark.slow
def test_sigterm_cancels_a_download_in_progress(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, _ = start(world, processes, "2.0.0", s3_endpoint=s3_proxy.endpoint)
    s3_proxy.hold_after(256 * 1024)  # a download that cannot finish
    deploy = world.deploy("2.1.0")
    wait_for(lambda: downloading(agent_proc, world, deploy), what="2.1.0 downloading")
    assert agent_proc.stop() == 0  # systemctl stop: no wait for the download, no SIGKILL
    assert world.store_temp_files() == []
    assert serving_version(server.url) == "2.0.0"
    attempts = agent_status_cli(world)["attempts"]
    assert (attempts[0]["commit"], attempts[0]["outcome"], attempts[0]["phase"]) == (
        deploy, "interrupted", "downloading")


# --- /status says what is true now ----------------------------------------------------------


@pytest.mark.slow
def test_status_shows_what_the_server_serves_now(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, _ = start(world, processes, "2.0.0", s3_endpoint=s3_proxy.endpoint)
    s3_proxy.down()
    world.deploy("2.1.0")  # fails at downloading, again and again
    wait_degraded(agent_proc, "cannot connect to S3")
    agent_proc.stop()
    restarted = processes.agent(world, server.url, s3_endpoint=s3_proxy.endpoint)
    s = wait_degraded(restarted, "cannot connect to S3", failures=2)
    assert s["models"][MODEL]["serving_version"] == "2.0.0"  # not None: it is served
    assert s["server"]["reachable"] is True and s["server"]["error"] is None

    server.kill()
    s = wait_for(lambda: status_if(restarted, server_reachable=False), what="server down seen")
    assert s["models"][MODEL]["serving_version"] is None  # not the last version it knew
    assert s["models"][MODEL]["in_sync"] is False
    assert "does not answer" in s["server"]["error"]
    text = subprocess.run([str(GGUFOPS), "agent", "status", "--url", restarted.url],
                          capture_output=True, text=True, check=True).stdout
    assert "server:          UNREACHABLE (inference server" in text
    assert "serving - (OUT OF SYNC)" in text


@pytest.mark.slow
def test_refused_commit_follows_the_newest_commit(
        world: World, processes: Processes, s3_proxy: ThrottledProxy) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, _ = start(world, processes, "2.0.0", s3_endpoint=s3_proxy.endpoint)
    bad = world.deploy("9.9.9")
    wait_for(lambda: status_if(agent_proc, refused_commit=bad), what="the commit refused")
    s3_proxy.down()
    failing = world.deploy("2.1.0")
    s = wait_degraded(agent_proc, "cannot connect to S3")
    assert s["desired_commit"] == failing
    assert s["refused_commit"] is None  # the refusal of `bad` is no longer what is true
    worse = world.deploy("8.8.8")
    s = wait_for(lambda: status_if(agent_proc, refused_commit=worse), what="the next refusal")
    assert "8.8.8" in s["last_error"]
    s3_proxy.up()
    good = world.deploy("2.1.0")
    assert wait_healthy(agent_proc, good)["refused_commit"] is None
    assert serving_version(server.url) == "2.1.0"


@pytest.mark.slow
def test_a_restarted_server_gets_its_model_back_from_the_store(
        world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    server, agent_proc, commit = start(world, processes, "2.0.0")
    port = int(server.url.rsplit(":", 1)[1])
    server.stop()
    fresh = processes.serve(world.store, world.token_file, port=port)
    wait_serving(fresh, "2.0.0")
    wait_healthy(agent_proc, commit)
    assert downloads(agent_proc) == 1


def test_agent_command_names_missing_options(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGUFOPS_")}
    proc = subprocess.run([str(GGUFOPS), "agent"], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 2
    assert "needs --repo, --env, --store, --server" in proc.stderr
    proc = subprocess.run([str(GGUFOPS), "agent", "status", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: no apply log at {tmp_path}/applylog.sqlite; pass " \
        "the agent's --state-dir"


@pytest.mark.slow
def test_a_canary_is_loaded_beside_the_version_and_unloaded_when_dropped(
        world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent_proc, _ = start(world, processes, "2.0.0")
    added = world.deploy_canary("2.0.0", ("2.1.0", 100))

    def canary_served() -> dict[str, Any] | None:
        entry = serving(server.url)[MODEL]
        return entry if "canary" in entry else None

    entry = wait_for(canary_served, what="the canary served")
    assert (entry["version"], entry["sha256"]) == ("2.0.0", world.sha256("2.0.0"))
    assert (entry["canary"]["version"], entry["canary"]["sha256"], entry["canary"]["weight"]) \
        == ("2.1.0", world.sha256("2.1.0"), 100)
    s = wait_healthy(agent_proc, added)
    m = s["models"][MODEL]
    assert m["in_sync"] is True and m["serving_version"] == "2.0.0"
    assert m["desired_canary"] == m["serving_canary"] == {
        "version": "2.1.0", "sha256": world.sha256("2.1.0"), "weight": 100}
    reply = get(f"{server.url}/v1/models/{MODEL}")
    assert reply["canary"]["display_id"].startswith("llama3-instruct-v2.1.0")
    assert world.stored() == {world.sha256("2.0.0"), world.sha256("2.1.0")}
    text = subprocess.run([str(GGUFOPS), "agent", "status", "--state-dir", str(world.state_dir)],
                          capture_output=True, text=True, check=True).stdout
    assert "model llama3-instruct: desired 2.0.0, serving 2.0.0 (ok)" in text
    assert "  canary: desired 2.1.0 at 100%, serving 2.1.0 at 100%" in text
    attempts = agent_status_cli(world)["attempts"]
    assert attempts[0]["models"][MODEL]["canary"]["version"] == "2.1.0"
    assert attempts[0]["models"][MODEL]["canary"]["weight"] == 100

    reweighted = world.deploy_canary("2.0.0", ("2.1.0", 30))
    wait_for(lambda: serving(server.url)[MODEL].get("canary", {}).get("weight") == 30,
             what="the new weight")
    wait_healthy(agent_proc, reweighted)

    dropped = world.deploy_canary("2.0.0", None)
    wait_for(lambda: "canary" not in serving(server.url)[MODEL], what="the canary unloaded")
    s = wait_healthy(agent_proc, dropped)
    assert serving_version(server.url) == "2.0.0"
    assert s["models"][MODEL] == {
        "desired_version": "2.0.0", "desired_sha256": world.sha256("2.0.0"),
        "serving_version": "2.0.0", "serving_sha256": world.sha256("2.0.0"), "in_sync": True,
    }  # fmt: skip
    assert downloads(agent_proc) == 2  # the canary's weight change needed no download


@pytest.mark.slow
def test_retention_keeps_the_canary_artifact(world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    world.publish("2.2.0", "degraded")
    server, agent_proc, _ = start(world, processes, "2.0.0", extra=["--keep", "2"])
    world.deploy("2.1.0")
    wait_serving(server, "2.1.0")
    commit = world.deploy_canary("2.2.0", ("2.0.0", 10))
    wait_serving(server, "2.2.0")
    wait_healthy(agent_proc, commit)
    assert serving(server.url)[MODEL]["canary"]["version"] == "2.0.0"
    # keep 2 would drop the oldest (2.0.0), but the canary uses it; 2.1.0 is the previous
    assert world.stored() == {world.sha256(v) for v in ("2.0.0", "2.1.0", "2.2.0")}
    assert downloads(agent_proc) == 3
