"""Fleet status: each agent publishes fleet/<env>/<host>.json to S3; `fleet status` shows
drift and staleness against git; `history --hosts`; the GitHub commit status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ggufops.artifacts.s3config import S3Settings
from ggufops.artifacts.s3object import S3Objects
from ggufops.artifacts.s3server import ServerInfo
from ggufops.errors import S3ObjectError, UsageError
from ggufops.fleet import status as fleetstatus
from ggufops.fleet import view as fleetview
from ggufops.fleet.status import Applied, HostReport
from testing.fakegithub import FakeGitHub
from testing.fleet import fleet_object, start_agent, start_host, wait_published
from testing.runtime import Processes, World, wait_for
from testing.scratch import cli

SHA_A, SHA_B = "a" * 64, "b" * 64


def settings(info: ServerInfo, prefix: str, secret: str | None = None) -> S3Settings:
    return S3Settings(remote="models", url=f"s3://{info.bucket}/{prefix}", bucket=info.bucket,
                      prefix=prefix, endpoint_url=info.endpoint,
                      access_key_id=info.access_key_id,
                      secret_access_key=secret or info.secret_access_key)


# --- units ------------------------------------------------------------------------------------


def test_labels_parse_and_bad_pairs_name_themselves() -> None:
    assert fleetstatus.parse_labels("zone=eu, wave=1") == {"zone": "eu", "wave": "1"}
    assert fleetstatus.parse_labels(None) == {}
    with pytest.raises(UsageError, match="'wave' is not key=value"):
        fleetstatus.parse_labels("zone=eu,wave")
    with pytest.raises(UsageError, match="--host-name"):
        fleetstatus.check_host_name("a/b")


def test_applied_history_appends_new_commits_only_and_is_bounded() -> None:
    history: list[Applied] = []
    for i in range(fleetstatus.APPLIED_KEPT + 5):
        history = fleetstatus.remember_applied(history, f"c{i}", f"t{i}")
        history = fleetstatus.remember_applied(history, f"c{i}", "later")  # same: no entry
    assert len(history) == fleetstatus.APPLIED_KEPT
    assert history[0] == Applied("c5", "t5")
    assert history[-1].commit == f"c{fleetstatus.APPLIED_KEPT + 4}"


def seen(host: str, serving: dict[str, Any], age: float = 1.0, phase: str = "healthy",
         reason: str | None = None) -> fleetview.SeenReport:
    report = HostReport(host=host, environment="production", labels={}, phase=phase,
                        reason=reason, applied_commit="c1", desired_commit="c1",
                        serving=serving)
    return fleetview.SeenReport(report, age)


def test_drift_and_staleness_decide_the_exit_code() -> None:
    wants = {"m": fleetview.Want("2.0.0", SHA_A)}
    desired = fleetview.Desired("production", "origin/main", "c" * 40, wants)
    good = seen("h1", {"m": {"version": "2.0.0", "sha256": SHA_A}})
    wrong_bytes = seen("h2", {"m": {"version": "2.0.0", "sha256": SHA_B}}, phase="degraded",
                       reason="S3 does not answer")
    old = seen("h3", {"m": {"version": "2.0.0", "sha256": SHA_A}}, age=90.0)

    assert fleetview.view(desired, [good], 60).exit_code == 0
    stale = fleetview.view(desired, [good, old], 60)
    assert (stale.exit_code, [h.state for h in stale.hosts]) == (5, ["in-sync", "stale"])
    drift = fleetview.view(desired, [good, wrong_bytes, old], 60)
    assert drift.exit_code == 4
    assert drift.hosts[1].differences == [
        "m: wants 2.0.0, serves 2.0.0 with other bytes (sha256 bbbbbbbbbbbb…)"]
    assert fleetview.commit_state(drift) == "failure"  # the drifting host is degraded
    assert fleetview.view(desired, [], 60).exit_code == 5  # nobody reported: not "all well"
    text = fleetview.format_view(drift)
    assert "drift on h2 (exit 4)" in text and "S3 does not answer" in text


def test_a_canary_is_part_of_the_desired_state() -> None:
    wants = {"m": fleetview.Want("2.0.0", SHA_A, ("2.1.0", SHA_B, 25))}
    no_canary = {"m": {"version": "2.0.0", "sha256": SHA_A}}
    with_canary = {"m": {**no_canary["m"],
                         "canary": {"version": "2.1.0", "sha256": SHA_B, "weight": 25}}}
    assert fleetview.differences_of(wants, no_canary) == [
        "m: wants 2.0.0 + 2.1.0 (25%), serves 2.0.0"]
    assert fleetview.differences_of(wants, with_canary) == []


# --- the S3 client, against the real SeaweedFS ---------------------------------------------


def test_signed_put_get_and_list_against_real_s3(s3_server: ServerInfo) -> None:
    objects = S3Objects(settings(s3_server, "fleet-unit"))
    objects.put("fleet-unit/fleet/p/h 1.json", b'{"a": 1}')  # a space needs URI encoding
    objects.put("fleet-unit/fleet/p/h2.json", b"{}")
    assert objects.get("fleet-unit/fleet/p/h 1.json") == b'{"a": 1}'
    assert objects.get("fleet-unit/fleet/p/none.json") is None
    listing = objects.list("fleet-unit/fleet/p/")
    assert sorted(o.key for o in listing.objects) == ["fleet-unit/fleet/p/h 1.json",
                                                     "fleet-unit/fleet/p/h2.json"]
    assert all(abs(listing.server_time - o.modified) < 600 for o in listing.objects)


def test_a_wrong_secret_is_a_clear_one_line_error(s3_server: ServerInfo) -> None:
    objects = S3Objects(settings(s3_server, "fleet-unit", secret="not-the-secret"))
    with pytest.raises(S3ObjectError, match=r"HTTP 403: SignatureDoesNotMatch.*credentials"):
        objects.put("fleet-unit/x.json", b"{}")


# --- real agents ------------------------------------------------------------------------------


def fleet_cli(world: World, *args: str) -> tuple[int, Any]:
    result = cli(world.repo, "fleet", "status", "--env", "production", "--json", *args)
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else result.stderr


@pytest.fixture
def aws_env(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    for name, value in world.s3.env().items():
        monkeypatch.setenv(name, value)
    return world


@pytest.mark.slow
def test_agents_publish_and_fleet_status_shows_drift_until_hosts_converge(
        aws_env: World, processes: Processes, fake_github: FakeGitHub) -> None:
    world = aws_env
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    first = world.deploy("2.0.0")
    h1 = start_host(world, processes, "h1", {"zone": "eu", "wave": "1"})
    h2 = start_host(world, processes, "h2", {"zone": "us"})
    for host in ("h1", "h2"):
        data = wait_published(world, host, commit=first, phase="healthy")
    assert data["serving"]["llama3-instruct"] == {"version": "2.0.0",
                                                  "sha256": world.sha256("2.0.0")}
    assert data["labels"] == {"zone": "us"} and data["llama_cpp_python"]
    assert fleet_cli(world)[0] == 0

    assert h2.agent is not None
    h2.agent.kill()  # h2's agent is down: it keeps serving 2.0.0 and stops reporting
    second = world.deploy("2.1.0")
    wait_published(world, "h1", commit=second, phase="healthy")
    code, report = fleet_cli(world, "--github-status")
    hosts = {h["host"]: h for h in report["hosts"]}
    assert code == 4 and report["commit"] == second
    assert hosts["h1"]["state"] == "in-sync"
    assert hosts["h2"]["differences"] == ["llama3-instruct: wants 2.1.0, serves 2.0.0"]
    assert fake_github.statuses[-1]["sha"] == second
    assert fake_github.statuses[-1]["context"] == "ggufops/production"
    assert fake_github.statuses[-1]["state"] == "pending"  # h2 was healthy when last seen

    def h2_stale() -> bool:
        code, report = fleet_cli(world, "--stale-after", "1")
        return code == 4 and report["hosts"][1]["state"] == "stale"

    wait_for(h2_stale, timeout=60, interval=0.5, what="h2 to become stale")
    start_agent(world, processes, h2)  # back: it applies the head and reports it
    wait_published(world, "h2", commit=second, phase="healthy")
    assert fleet_cli(world, "--github-status")[0] == 0
    assert fake_github.statuses[-1]["state"] == "success"

    result = cli(world.repo, "history", "--env", "production", "--hosts", "--json")
    rows = [(r["host"], r["commit"]) for r in json.loads(result.stdout)]
    assert [c for h, c in rows if h == "h2"] == [first, second]
    assert [c for h, c in rows if h == "h1"] == [first, second]

    assert h1.agent is not None and h1.agent.stop() == 0  # SIGTERM: it says it stopped
    assert wait_published(world, "h1", phase="stopped")["applied_commit"] == second


@pytest.mark.slow
def test_the_applied_history_survives_an_agent_restart(
        aws_env: World, processes: Processes) -> None:
    """The list of applied commits is read back from S3 by a restarted agent."""
    world = aws_env
    world.publish("2.0.0", "baseline")
    first = world.deploy("2.0.0")
    h1 = start_host(world, processes, "h1")
    wait_published(world, "h1", commit=first, phase="healthy")
    assert h1.agent is not None
    h1.agent.kill()
    start_agent(world, processes, h1)
    world.publish("2.1.0", "improved")
    second = world.deploy("2.1.0")
    data = wait_published(world, "h1", commit=second, phase="healthy")
    assert [a["commit"] for a in data["applied"]] == [first, second]
    assert fleet_object(world, "h2") is None
