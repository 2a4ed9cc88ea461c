"""The demo's fleet step: a second host whose agent is paused while production changes, so
`ggufops fleet status` shows the drift (exit 4); resumed, it converges (exit 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ggufops.errors import DemoFailed
from ggufops.httpjson import request_json

if TYPE_CHECKING:
    from ggufops.demo.story import Demo

MODEL = "llama3-instruct"


def held_back_host(demo: Demo, free_port: Callable[[], int], exe: str) -> str:
    agent_url, agent = _start_second_host(demo, free_port, exe)
    _wait_converged(demo, agent_url, 120)
    os.killpg(agent.pid, signal.SIGSTOP)  # held back: its agent no longer acts
    demo.say(f"  (host-2's agent paused: kill -STOP {agent.pid})")
    try:
        demo.ggufops("rollback", "--env", "production", "--model", MODEL, "--reason",
                     "demo: end the canary", "--push")
        demo.git("pull", "-q", "--ff-only", "origin", "main")
        demo.trigger_sync()
        drift = _wait_fleet(demo, exe, 4, 120)
    finally:
        os.killpg(agent.pid, signal.SIGCONT)
    demo.say(f"  (host-2's agent resumed: kill -CONT {agent.pid})")
    began = time.monotonic()
    _wait_fleet(demo, exe, 0, 120)
    return (f"drift on host-2 shown (exit {drift}); converged {time.monotonic() - began:.1f} s "
            "after its agent resumed (exit 0)")


def _start_second_host(demo: Demo, free_port: Callable[[], int], exe: str) -> tuple[str, Any]:
    host = demo.workdir / "host-2"
    server_port, agent_port = free_port(), free_port()
    server_url = f"http://127.0.0.1:{server_port}"
    token_file = demo.workdir / "admin-token"
    demo.start("serve-2", exe, "serve", "--store", str(host / "store"), "--port",
               str(server_port), "--admin-token-file", str(token_file))
    agent = demo.start("agent-2", exe, "agent", "--repo", str(demo.remote), "--env",
                       "production", "--store", str(host / "store"), "--server", server_url,
                       "--admin-token-file", str(token_file), "--s3-endpoint",
                       demo.env["AWS_ENDPOINT_URL_S3"], "--interval", "1", "--status-port",
                       str(agent_port), "--state-dir", str(host / "agent"), "--host-name",
                       "host-2", "--heartbeat", "5")
    return f"http://127.0.0.1:{agent_port}", agent


def _wait_converged(demo: Demo, agent_url: str, timeout: float) -> None:
    """Until host-2's agent says healthy with every model in sync."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = request_json("GET", f"{agent_url}/status", timeout=2).data
        except OSError:
            status = None
        if isinstance(status, dict) and status.get("phase") == "healthy" and all(
                m.get("in_sync") for m in (status.get("models") or {}).values()):
            return
        time.sleep(0.1)
    raise DemoFailed(f"host-2 did not become healthy within {timeout:.0f} s; see "
                     f"{demo.workdir}/agent-2.log")


def _wait_fleet(demo: Demo, exe: str, code: int, timeout: float) -> int:
    """Run `fleet status` until it exits `code` with host-1 in sync (then show it)."""
    deadline = time.monotonic() + timeout
    args = [exe, "fleet", "status", "--env", "production"]
    while time.monotonic() < deadline:
        proc = subprocess.run([*args, "--json"], cwd=demo.repo, env=demo.env,
                              capture_output=True, text=True, check=False)
        try:
            hosts = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
        except (ValueError, KeyError):
            hosts = {}
        if proc.returncode == code and hosts.get("host-1", {}).get("state") == "in-sync":
            demo.ggufops(*args[1:], check=False)  # as a person sees it
            return code
        time.sleep(0.5)
    raise DemoFailed(f"`ggufops fleet status` did not exit {code} within {timeout:.0f} s")
