"""Planted secrets show up in no output channel of the agent, the server or `s3 serve`.

Four secrets are planted: a token in the agent's git URL (a real git remote over smart
HTTP with basic auth), the S3 secret key in the agent's environment, the secret that
`s3 serve` generates, and the admin token. Then every channel is read: process output and
logs, /status, /metrics, /healthz, `agent status` (from disk and from a running agent), and
every file the agent, the server and `s3 serve` wrote, with their modes."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from ggufops.artifacts.s3server import read_running
from testing.githttp import TOKEN as GIT_TOKEN
from testing.githttp import GitHttpServer
from testing.runtime import (
    GGUFOPS,
    MODEL,
    TOKEN,
    Processes,
    World,
    http,
    serving_version,
    wait_for,
)

PRIVATE = 0o600


def _agent_status(*args: str) -> str:
    return subprocess.run([str(GGUFOPS), "agent", "status", *args], capture_output=True,
                          text=True, check=True).stdout


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _leaks(secrets: dict[str, str], channels: dict[str, bytes]) -> list[str]:
    return [f"{what} in {where}" for where, data in channels.items()
            for what, secret in secrets.items() if secret.encode() in data]


def _s3_serve(world: World, state: Path) -> tuple[bytes, str]:
    """Run `s3 serve` until it answers, stop it; (its output, the secret it generated)."""
    proc = subprocess.Popen([str(GGUFOPS), "-C", str(world.repo), "s3", "serve", "--port", "0",
                             "--state-dir", str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        info = wait_for(lambda: read_running(state) if (state / "server.json").is_file()
                        else None, what="s3 serve running")
        wait_for((world.repo / ".dvc" / "config.local").is_file,
                 what=".dvc/config.local written")
        modes = {name: (state / name).stat().st_mode & 0o777 for name in ("s3.json",
                                                                          "server.json")}
        assert modes == {"s3.json": PRIVATE, "server.json": PRIVATE}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out + err, info.secret_access_key


@pytest.mark.slow
def test_planted_secrets_appear_in_no_output_channel(
        world: World, processes: Processes, git_http_server: GitHttpServer,
        tmp_path: Path) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    world.deploy("2.0.0")
    url = git_http_server.url(world.remote)
    assert GIT_TOKEN in url
    server = processes.serve(world.store, world.token_file)
    agent = processes.agent(world, server.url, repo_url=url,
                            env={"GIT_ALLOW_PROTOCOL": "file:http"})
    wait_for(lambda: serving_version(server.url) == "2.0.0", what="2.0.0 served over http git")
    world.deploy("2.1.0")
    wait_for(lambda: serving_version(server.url) == "2.1.0", what="2.1.0 served")
    git_http_server.stop()  # now every error names the remote's URL
    status = wait_for(lambda: (s := http("GET", f"{agent.url}/status")[1])["remote"][
        "reachable"] is False and s["phase"] == "degraded" and s, what="the remote reported down")
    assert status["remote"]["url"] == url.replace(GIT_TOKEN, "***")
    assert "deploy-bot:***@127.0.0.1" in status["remote"]["error"]
    assert "deploy-bot:***@127.0.0.1" in status["last_error"]

    s3_output, s3_serve_secret = _s3_serve(world, tmp_path / "s3-serve")
    secrets = {"the git token": GIT_TOKEN, "the agent's S3 secret": world.s3.secret_access_key,
               "the s3 serve secret": s3_serve_secret, "the admin token": TOKEN}
    channels = {
        "the agent's first line": agent.banner.encode(),
        "/status": json.dumps(status).encode(),
        "/metrics": str(http("GET", f"{agent.url}/metrics")[1]).encode(),
        "/healthz": json.dumps(http("GET", f"{agent.url}/healthz")[1]).encode(),
        "agent status": _agent_status("--state-dir", str(world.state_dir)).encode(),
        "agent status --json": _agent_status("--state-dir", str(world.state_dir), "--json",
                                             "--limit", "100").encode(),
        "agent status --url": _agent_status("--url", agent.url).encode(),
        "the server's /v1/models": json.dumps(http("GET", f"{server.url}/v1/models")[1]).encode(),
        "the server's /metrics": str(http("GET", f"{server.url}/metrics")[1]).encode(),
        "the server's /admin/models": json.dumps(http("GET", f"{server.url}/admin/models",
                                                      token=TOKEN)[1]).encode(),
        "s3 serve's output": s3_output,
    }
    agent.stop()
    server.stop()
    channels["the agent's log"] = agent.log_path.read_bytes()
    channels["the server's log"] = server.log_path.read_bytes()
    for path in _files(world.state_dir) + _files(world.store):
        channels[str(path)] = path.read_bytes()
    s3_state = tmp_path / "s3-serve"
    for path in _files(s3_state):
        if path.name not in ("s3.json", "server.json"):  # the two that must hold it, 0600
            channels[str(path)] = path.read_bytes()

    assert _leaks(secrets, channels) == []
    assert "deploy-bot:***@" in channels["the agent's log"].decode()  # redacted, not dropped
    assert MODEL in channels["agent status"].decode()
    logs = sorted(p for p in world.state_dir.iterdir() if p.name.startswith("applylog.sqlite"))
    assert logs and {p.stat().st_mode & 0o777 for p in logs} == {PRIVATE}
    assert world.state_dir.stat().st_mode & 0o777 == 0o700
    local = world.repo / ".dvc" / "config.local"  # the one place s3 serve writes the secret
    assert s3_serve_secret in local.read_text() and local.stat().st_mode & 0o777 == PRIVATE
