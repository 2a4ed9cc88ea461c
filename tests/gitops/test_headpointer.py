"""`ggufops publish-head` and `ggufops agent --watch s3://...`: the branch head as a pointer
object in a real S3 (SeaweedFS), polled with conditional GETs by a real agent."""

from __future__ import annotations

import json

import pytest

from ggufops.errors import GgufopsError
from ggufops.gitops import headpointer
from testing.repos import git
from testing.runtime import Processes, World, get, metrics, serving_version, wait_for
from testing.scratch import cli


@pytest.fixture
def s3_env(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """CI's credentials for the registry's S3 remote, as AWS_* variables."""
    for name, value in world.s3.env().items():
        monkeypatch.setenv(name, value)
    return world


def _publish(world: World) -> str:
    result = cli(world.repo, "publish-head", "--env", "production", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(result.output)
    assert data["commit"] == git(world.repo, "rev-parse", "main")
    return str(data["url"])


def test_the_pointer_is_read_once_then_answered_304_until_it_changes(s3_env: World) -> None:
    world = s3_env
    url = _publish(world)
    assert url == f"s3://{world.s3.bucket}/{world.prefix}/fleet/production/HEAD"
    first = git(world.repo, "rev-parse", "main")
    watch = headpointer.PointerWatch(url, world.s3.endpoint)
    assert [watch.head() for _ in range(3)] == [first] * 3
    assert watch.not_modified == 2  # SeaweedFS honours If-None-Match: two 304s
    second = world.push("another commit")
    _publish(world)
    assert watch.head() == second
    assert watch.not_modified == 2
    missing = headpointer.PointerWatch(url.replace("production", "nowhere"),
                                       world.s3.endpoint)
    with pytest.raises(headpointer.PointerError, match="publish-head"):
        missing.head()
    with pytest.raises(GgufopsError, match="neither `git` nor an s3://"):
        headpointer.PointerUrl.parse("https://example.invalid/HEAD")


def _ok_checks(agent_url: str) -> float:
    return metrics(agent_url).get('ggufops_agent_remote_checks_total{result="ok"}', 0.0)


@pytest.mark.slow
def test_an_agent_watching_the_pointer_applies_what_ci_publishes(
        s3_env: World, processes: Processes) -> None:
    world = s3_env
    world.publish("1.0.0", "baseline")
    world.publish("1.1.0", "improved")
    world.deploy("1.0.0")
    url = _publish(world)
    server = processes.serve(world.store, world.token_file)
    agent = processes.agent(world, server.url, extra=["--watch", url])
    wait_for(lambda: serving_version(server.url) == "1.0.0", what="1.0.0 from the pointer")
    pushed = world.deploy("1.1.0")  # pushed to git, not yet published
    seen = _ok_checks(agent.url)
    wait_for(lambda: _ok_checks(agent.url) >= seen + 10, what="ten more pointer checks")
    assert serving_version(server.url) == "1.0.0"  # git alone moves nothing: the pointer does
    assert get(f"{agent.url}/status")["applied_commit"] != pushed
    _publish(world)
    wait_for(lambda: serving_version(server.url) == "1.1.0", what="1.1.0 once published")
    status = wait_for(lambda: (s := get(f"{agent.url}/status"))["phase"] == "healthy" and s,
                      what="healthy")
    assert status["applied_commit"] == pushed
