"""Release groups: models that switch and roll back together, all or nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.repos import write_version
from testing.runtime import GGUFOPS, Proc, Processes, World, get, serving, wait_for

ENV_FILE = Path("environments") / "production.yaml"
GROUP = {"rag": ["embedder", "generator"]}


def write_env(repo: Path, versions: dict[str, str],
              groups: dict[str, list[str]] | None = None) -> None:
    body: dict[str, Any] = {"environment": "production"}
    if groups is not None:
        body["groups"] = groups
    body["models"] = {m: {"version": v} for m, v in versions.items()}
    (repo / ENV_FILE).write_text("# production\n" + yaml.safe_dump(body, sort_keys=False))


def test_groups_are_validated_with_file_and_line(registry_repo: Path) -> None:
    write_version(registry_repo, "embedder", "1.0.0")
    write_env(registry_repo, {"embedder": "1.0.0"},
              {"rag": ["embedder", "generator"], "other": ["embedder", "x"]})
    proc = subprocess.run([str(GGUFOPS), "validate"], cwd=registry_repo, capture_output=True,
                          text=True, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "environments/production.yaml:6:5:" in out and "group rag names generator, which " \
        "this environment does not run" in out
    assert "embedder is in groups rag and other" in out
    write_env(registry_repo, {"embedder": "1.0.0"}, {"rag": ["embedder"]})
    proc = subprocess.run([str(GGUFOPS), "validate"], cwd=registry_repo, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1 and "groups.rag" in proc.stdout + proc.stderr


def versions(server: Proc) -> dict[str, str]:
    return {name: entry["version"] for name, entry in serving(server.url).items()}


def status(agent: Proc) -> dict[str, Any]:
    return dict(get(f"{agent.url}/status"))


def applied(agent: Proc, commit: str) -> bool:
    s = status(agent)
    return bool(s["phase"] == "healthy" and s["applied_commit"] == commit)


def cli(world: World, *args: str) -> Any:
    env = {**os.environ, **world.s3.env(), "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run([str(GGUFOPS), *args, "--json"], cwd=world.repo, capture_output=True,
                          text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_a_group_switches_rolls_back_and_refuses_together(world: World,
                                                           processes: Processes) -> None:
    world.publish("1.0.0", "baseline", name="embedder")
    world.publish("1.1.0", "improved", name="embedder")
    world.publish("2.0.0", "degraded", name="generator")
    world.publish("2.1.0", "improved", name="generator")
    half = world.models["baseline"].read_bytes()
    world.publish("2.2.0", "baseline", name="generator", content=half[: len(half) // 2])
    write_env(world.repo, {"embedder": "1.0.0", "generator": "2.0.0"}, GROUP)
    first = world.push("rag 1.0.0 + 2.0.0")
    server = processes.serve(world.store, world.token_file)
    agent = processes.agent(world, server.url)
    wait_for(lambda: applied(agent, first), what="the first release applied")
    assert versions(server) == {"embedder": "1.0.0", "generator": "2.0.0"}

    write_env(world.repo, {"embedder": "1.1.0", "generator": "2.1.0"}, GROUP)
    second = world.push("rag 1.1.0 + 2.1.0")
    wait_for(lambda: applied(agent, second), what="the group switched")
    assert versions(server) == {"embedder": "1.1.0", "generator": "2.1.0"}

    result = cli(world, "rollback", "--env", "production", "--group", "rag", "--push",
                 "--reason", "answers got worse")
    assert result["group"] == "rag" and result["result"]["pushed"] is True
    assert [(m["model"], m["to_version"]) for m in result["models"]] == [
        ("embedder", "1.0.0"), ("generator", "2.0.0")]
    revert = result["result"]["commit"]
    wait_for(lambda: applied(agent, revert), what="the group rolled back")
    assert versions(server) == {"embedder": "1.0.0", "generator": "2.0.0"}
    subprocess.run(["git", "pull", "-q", "--ff-only", "origin", "main"], cwd=world.repo,
                   check=True)
    rollbacks = [e for e in cli(world, "history", "--env", "production")
                 if e["commit"] == revert]
    assert sorted((e["model"], e["kind"], e["rollback_of"]) for e in rollbacks) == [
        ("embedder", "rollback", second), ("generator", "rollback", second)]
    assert {e["reason"] for e in rollbacks} == {"answers got worse"}

    write_env(world.repo, {"embedder": "1.1.0", "generator": "2.2.0"}, GROUP)
    broken = world.push("rag 1.1.0 + a generator llama.cpp cannot load")

    def refused() -> dict[str, Any] | None:
        s = status(agent)
        return s if s["phase"] == "degraded" and s["desired_commit"] == broken \
            and "group rag" in (s["last_error"] or "") else None

    s = wait_for(refused, what="the group refused")
    assert "generator-v2.2.0" in s["last_error"] and "no model of the group changed" \
        in s["last_error"]
    assert versions(server) == {"embedder": "1.0.0", "generator": "2.0.0"}  # neither moved
    admin = serving(server.url)
    assert admin["embedder"]["sha256"] == world.sha256("1.0.0", "embedder")
