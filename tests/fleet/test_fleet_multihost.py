"""Three real hosts (serve + agent each) in their own network namespaces, reaching S3 and
git over veth links: deploy, roll back, SIGKILL an agent mid-apply, cut one host's git and
another's whole link; every host converges, and a cut-off host keeps serving and says why.
Where namespaces cannot be made, the same runs on loopback ports and a warning says why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from testing.fleet import wait_published
from testing.multihost import Fleet, NetHost, fleet, store_temp_files
from testing.runtime import Processes, World, wait_for
from testing.scratch import cli

pytestmark = pytest.mark.slow


def serving_everywhere(hosts: list[NetHost], version: str) -> None:
    for host in hosts:
        wait_for(lambda h=host: h.version() == version, timeout=120,  # type: ignore[misc]
                 what=f"{host.name} to serve {version}")


def fleet_status(world: World, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli(world.repo, "fleet", "status", "--env", "production", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def by_host(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in report["hosts"]}


@pytest.fixture
def hosts(world: World, processes: Processes, monkeypatch: pytest.MonkeyPatch,
          record_property: Any) -> Any:
    for name, value in world.s3.env().items():
        monkeypatch.setenv(name, value)
    with fleet(world, processes) as f:  # on loopback it warns (NamespacesUnavailable) why
        record_property("fleet_mode", f.mode)
        record_property("fleet_loopback_reason", f.reason or "")
        print(f"multi-host test: {f.mode}" + (f" ({f.reason})" if f.reason else ""))
        for i in range(3):
            f.add_host(f"h{i + 1}", {"wave": str(i + 1)})
        yield f


def test_three_hosts_converge_through_deploys_rollbacks_kills_and_cut_links(
        world: World, hosts: Fleet) -> None:
    h1, h2, h3 = hosts.hosts
    for version, toy in (("2.0.0", "baseline"), ("2.1.0", "improved"), ("2.2.0", "degraded")):
        world.publish(version, toy)
    world.deploy("2.0.0")
    serving_everywhere(hosts.hosts, "2.0.0")
    deploy = world.deploy("2.1.0")
    serving_everywhere(hosts.hosts, "2.1.0")
    world.revert(deploy)  # a rollback: the generated revert commit, pushed
    serving_everywhere(hosts.hosts, "2.0.0")

    # SIGKILL h3's agent in the middle of an apply: its download of 2.2.0 is held
    assert h3.link is not None and h3.agent is not None
    h3.link.s3.hold_after(0)
    broken = world.deploy("2.2.0")
    wait_for(lambda: h3.status()["phase"] == "downloading", what="h3 to be downloading")
    h3.agent.kill()
    h3.link.s3.resume()
    serving_everywhere([h1, h2], "2.2.0")
    assert h3.version() == "2.0.0"  # no agent: it still serves what it had
    hosts.start_agent(h3)
    serving_everywhere([h3], "2.2.0")
    assert store_temp_files(h3) == []  # the killed download left nothing half-written

    # h2 cannot reach git: it keeps serving 2.2.0 and reports why
    assert h2.link is not None
    h2.link.git.down()
    rollback = world.revert(broken)
    serving_everywhere([h1, h3], "2.0.0")
    assert h2.version() == "2.2.0"
    # what a host serves and what it has published are two signals: a host's object in S3
    # follows its apply by up to a heartbeat, so read the report only once h1 and h3 have
    # published the rollback (reading it at once saw h1 still "drift" on a busy machine)
    for host in (h1, h3):
        wait_published(world, host.name, commit=rollback, phase="healthy")

    def h2_reports_git_down() -> dict[str, Any] | None:
        code, report = fleet_status(world)
        h = by_host(report)["h2"]
        return report if code == 4 and h["phase"] == "degraded" and h["reason"] else None

    report = wait_for(h2_reports_git_down, timeout=120, interval=0.5,
                      what="h2 to publish that git is unreachable")
    h = by_host(report)["h2"]
    assert "git" in h["reason"].lower() and h["serving"] == "llama3-instruct@2.2.0"
    assert by_host(report)["h1"]["state"] == "in-sync"
    h2.link.git.up()
    serving_everywhere([h2], "2.0.0")
    wait_published(world, "h2", commit=rollback, phase="healthy")

    # h1's whole link is cut: it keeps serving, goes stale in `fleet status`, converges after
    assert h1.link is not None
    h1.link.cut()
    again = world.deploy("2.1.0")
    serving_everywhere([h2, h3], "2.1.0")
    wait_for(lambda: by_host(fleet_status(world, "--stale-after", "2")[1])["h1"]["state"]
             == "stale", timeout=120, interval=0.5, what="h1 to be stale")
    if hosts.mode == "loopback":
        assert h1.version() == "2.0.0"  # reachable on loopback: it kept serving
    h1.link.restore()
    serving_everywhere([h1], "2.1.0")
    for host in hosts.hosts:
        wait_published(world, host.name, commit=again, phase="healthy")
    code, report = fleet_status(world)
    assert code == 0, report
    assert {h["state"] for h in report["hosts"]} == {"in-sync"}
