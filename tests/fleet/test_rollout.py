"""Rollout waves and partial rollbacks: hosts in a later wave wait for the earlier waves'
fleet status; a rollback skips the waves; a segment pins a version for labelled hosts."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from ggufops.fleet import rollout
from ggufops.fleet.status import HostReport
from ggufops.gitops import segments
from ggufops.registry.records import EnvEntry, environment_from_data
from testing.fleet import Host, start_agent, start_host, wait_published
from testing.repos import git, git_commit
from testing.runtime import Processes, World, get, wait_for
from testing.scratch import cli

ENV = """# production
environment: production
rollout:
  waves:
    - {wave: "1"}
    - {wave: "2"}
models:
  llama3-instruct:
    version: 2.1.0  # the improved one
"""


def report(host: str, labels: dict[str, str], commit: str, phase: str = "healthy"
           ) -> HostReport:
    return HostReport(host=host, environment="production", labels=labels, phase=phase,
                      reason=None, applied_commit=commit, desired_commit=commit, serving={})


def test_a_later_wave_waits_for_every_host_of_the_earlier_waves() -> None:
    waves = environment_from_data("production", yaml.safe_load(ENV)).waves
    assert waves == [{"wave": "1"}, {"wave": "2"}]
    assert rollout.wave_index(waves, {"wave": "2", "zone": "eu"}) == 1
    assert rollout.wave_index(waves, {"zone": "eu"}) == 2  # in no wave: last
    first = [report("a", {"wave": "1"}, "c2"), report("b", {"wave": "1"}, "c1")]
    assert rollout.gate(waves, {"wave": "2"}, "c2", first, "me").waiting_for == ["b"]
    first[1] = report("b", {"wave": "1"}, "c2", phase="degraded")
    assert not rollout.gate(waves, {"wave": "2"}, "c2", first, "me").ready
    first[1] = report("b", {"wave": "1"}, "c2")
    assert rollout.gate(waves, {"wave": "2"}, "c2", first, "me").ready
    assert rollout.gate(waves, {"wave": "1"}, "c9", first, "me").ready  # the first wave


def test_rollbacks_are_recognised_by_their_trailer_or_gits_revert_line() -> None:
    assert rollout.is_rollback("rollback(production): x\n\nRollback-Of: 0123abcd\n")
    assert rollout.is_rollback('Revert "deploy"\n\nThis reverts commit 0123456789abcdef.\n')
    assert not rollout.is_rollback("deploy(production): llama3-instruct 2.0.0 -> 2.1.0\n")


def test_a_segment_pins_a_version_for_matching_hosts_and_keeps_the_file_readable() -> None:
    text = segments.set_segment(ENV, "llama3-instruct", {"zone": "eu"}, "2.0.0", "p.yaml")
    text = segments.set_segment(text, "llama3-instruct", {"zone": "us"}, "1.0.0", "p.yaml")
    text = segments.set_segment(text, "llama3-instruct", {"zone": "eu"}, "2.0.1", "p.yaml")
    assert "# the improved one" in text and "# production" in text  # comments kept
    entry = yaml.safe_load(text)["models"]["llama3-instruct"]
    assert entry["segments"] == [{"selector": {"zone": "eu"}, "version": "2.0.1"},
                                 {"selector": {"zone": "us"}, "version": "1.0.0"}]
    assert rollout.version_for(EnvEntry.from_doc(entry), {"zone": "eu", "wave": "1"}) == "2.0.1"
    assert rollout.version_for(EnvEntry.from_doc(entry), {"zone": "ap"}) == "2.1.0"


# --- real agents ------------------------------------------------------------------------------


def push_env(world: World, version: str) -> str:
    path = world.repo / "environments" / "production.yaml"
    path.write_text(ENV.replace("2.1.0  # the improved one", version))
    return world.push(f"deploy llama3-instruct@{version} to production in waves")


def phase(host: Host) -> str:
    assert host.agent is not None
    return str(get(f"{host.agent.url}/status")["phase"])


def serving(hosts: list[Host], version: str) -> None:
    for host in hosts:
        wait_for(lambda h=host: h.version() == version, timeout=120,  # type: ignore[misc]
                 what=f"{host.name} to serve {version}")


@pytest.fixture
def aws_env(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    for name, value in world.s3.env().items():
        monkeypatch.setenv(name, value)
    return world


@pytest.mark.slow
def test_waves_hold_later_hosts_a_rollback_skips_them_a_segment_rolls_back_one_zone(
        aws_env: World, processes: Processes) -> None:
    world = aws_env
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    git_commit(world.repo, "register")
    first = push_env(world, "2.0.0")
    h1 = start_host(world, processes, "h1", {"wave": "1", "zone": "eu"})
    h2 = start_host(world, processes, "h2", {"wave": "2", "zone": "us"})
    h3 = start_host(world, processes, "h3", {"wave": "2", "zone": "eu"})
    serving([h1, h2, h3], "2.0.0")
    wait_published(world, "h1", commit=first, phase="healthy")

    assert h1.agent is not None
    h1.agent.kill()  # wave 1 cannot apply: wave 2 must wait
    deploy = push_env(world, "2.1.0")
    for host in (h2, h3):
        wait_for(lambda h=host: phase(h) == "waiting", what=f"{host.name} to wait")
    assert (h2.version(), h3.version()) == ("2.0.0", "2.0.0")
    start_agent(world, processes, h1)
    serving([h1, h2, h3], "2.1.0")
    for name in ("h1", "h2", "h3"):
        wait_published(world, name, commit=deploy, phase="healthy")

    h1.agent.kill()  # a rollback does not wait for wave 1
    result = cli(world.repo, "rollback", "--env", "production", "--push", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    serving([h2, h3], "2.0.0")
    assert h1.version() == "2.1.0"
    start_agent(world, processes, h1)
    serving([h1], "2.0.0")

    push_env(world, "2.1.0")  # again, then roll back the eu zone only
    serving([h1, h2, h3], "2.1.0")
    result = cli(world.repo, "rollback", "--env", "production", "--selector", "zone=eu",
                 "--push", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    plan = json.loads(result.stdout)
    assert (plan["strategy"], plan["to"]) == ("segment", "2.0.0")
    serving([h1, h3], "2.0.0")
    assert h2.version() == "2.1.0"
    pushed = yaml.safe_load(git(world.remote, "show", "main:environments/production.yaml"))
    entry = pushed["models"]["llama3-instruct"]  # a git change anyone can read
    assert entry["version"] == "2.1.0"
    assert entry["segments"] == [{"selector": {"zone": "eu"}, "version": "2.0.0"}]

    def converged() -> Any:
        result = cli(world.repo, "fleet", "status", "--env", "production", "--json")
        return result if result.exit_code == 0 else None

    status = wait_for(converged, timeout=120, interval=0.5,
                      what="fleet status to see every host in sync")
    hosts = {h["host"]: h for h in json.loads(status.stdout)["hosts"]}
    assert hosts["h1"]["serving"] == "llama3-instruct@2.0.0"
    assert hosts["h2"]["serving"] == "llama3-instruct@2.1.0"


def test_validate_checks_waves_and_segments(registry_repo: Any) -> None:
    from ggufops.registry import validate
    from testing.repos import write_version

    write_version(registry_repo, "llama3-instruct", "2.1.0")
    path = registry_repo / "environments" / "production.yaml"
    good = ENV + "    segments:\n      - selector: {zone: eu}\n        version: 2.1.0\n"
    path.write_text(good)
    assert validate.validate_repo(registry_repo) == []
    path.write_text(good.replace("        version: 2.1.0\n", "        version: 9.9.9\n"))
    problems = [str(p) for p in validate.validate_repo(registry_repo)]
    assert len(problems) == 1 and "9.9.9 on {'zone': 'eu'}, which is not registered" in \
        problems[0], problems
    path.write_text(good.replace("{zone: eu}", "{}"))
    assert validate.validate_repo(registry_repo)  # an empty selector would match every host
