"""The demo's trigger step: users rate a deployed version low, and the agent rolls it back by
itself (a rollback trigger), with no person acting; the time from the bad version serving
to the old one serving again is printed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import yaml

from ggufops.errors import DemoFailed
from ggufops.httpjson import error_message, request_json

if TYPE_CHECKING:
    from ggufops.demo.story import Demo

MODEL = "llama3-instruct"
TRIGGERS = {"production": {"window_s": 120, "min_requests": 5, "min_rating": 3.5,
                           "min_ratings": 5}}
RECOVERY_LIMIT_S = 120.0


def set_policy(demo: Demo) -> None:
    """Commit rollback_triggers for production to registry/policy.yaml and push it."""
    path = demo.repo / "registry" / "policy.yaml"
    text = path.read_text()
    if "\nrollback_triggers:" not in text:
        text += "\n" + yaml.safe_dump({"rollback_triggers": TRIGGERS}, sort_keys=False)
        path.write_text(text)
    demo.say(f"    registry/policy.yaml += rollback_triggers: {TRIGGERS}")
    demo.git("add", "registry/policy.yaml")
    demo.git("commit", "-q", "-m", "policy: roll production back when users rate a version "
             "below 3.5")
    demo.git("push", "-q", "origin", "main")
    branch = f"deploy/production/{MODEL}-2.1.0"  # the merged PR of the upgrade: done with
    demo.git("branch", "-q", "-D", branch)
    demo.git("push", "-q", "origin", "--delete", branch)


def rate_until_rolled_back(demo: Demo, bad: str, good: str) -> tuple[float, int]:
    """Simulated users: every answer of `bad` rated 1. Returns (seconds from `bad` serving
    to `good` serving again, ratings sent)."""
    began, ratings = time.monotonic(), 0
    while time.monotonic() - began < RECOVERY_LIMIT_S:
        body = {"model": MODEL, "prompt": "The ", "max_tokens": 4}
        reply = request_json("POST", f"{demo.server_url}/v1/completions", body, timeout=30)
        if reply.status != 200:
            raise DemoFailed(f"/v1/completions answered {error_message(reply)}")
        shown = str(reply.data["model"])
        if f"-v{good}-" in shown:
            return time.monotonic() - began, ratings
        request_json("POST", f"{demo.server_url}/v1/feedback",
                     {"id": reply.data["id"], "rating": 1}, timeout=10)
        ratings += 1
    raise DemoFailed(f"the agent did not roll {MODEL}@{bad} back within "
                     f"{RECOVERY_LIMIT_S:.0f} s; see {demo.workdir}/agent.log")


def trigger_commit(demo: Demo) -> str:
    """The Rollback-Trigger trailer of the remote's newest commit."""
    demo.git("pull", "-q", "--ff-only", "origin", "main")
    message = demo.run("git", "log", "-1", "--format=%B", quiet=True).stdout
    trailer = next((ln for ln in message.splitlines() if ln.startswith("Rollback-Trigger:")),
                   None)
    if trailer is None:
        raise DemoFailed(f"the newest commit is not a trigger's revert: {message!r}")
    demo.say(f"    {trailer}")
    return trailer
