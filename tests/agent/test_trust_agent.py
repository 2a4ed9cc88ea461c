"""A real `ggufops agent --trust ... --webhook-secret-file ...` next to a real `ggufops
serve`: only commits signed by a listed key are applied, a force-push is refused unless
signed and newer, and only signed webhooks make it look at the remote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ggufops.agent import webhook
from testing.repos import git, git_commit, set_environment
from testing.runtime import MODEL, Proc, Processes, World, get, serving_version, wait_for
from testing.signing import allowed_signers, forge, make_key, sign_with

SECRET = b"agent-webhook-secret-0123456789"


def _push_hook(agent: Proc, delivery: str, *, secret: bytes = SECRET,
               ref: str = "refs/heads/main") -> int:
    import urllib.error
    import urllib.request

    body = json.dumps({"ref": ref}).encode()
    headers = {"X-Hub-Signature-256": webhook.sign(secret, body), "X-GitHub-Event": "push",
               "X-GitHub-Delivery": delivery, "Content-Type": "application/json"}
    request = urllib.request.Request(f"{agent.url}/sync", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _status(agent: Proc) -> dict[str, Any]:
    return dict(get(f"{agent.url}/status"))


def _refused(agent: Proc, commit: str, delivery: str, reason: str) -> dict[str, Any]:
    """Push notification for `commit`; wait until the agent refuses it for `reason`."""
    assert _push_hook(agent, delivery) == 202
    status = wait_for(lambda: (s := _status(agent))["refused_commit"] == commit and s,
                      what=f"the agent to refuse {commit[:12]}")
    assert status["refused_reason"] == reason, status
    assert status["phase"] == "degraded"
    assert commit[:12] in status["last_error"]
    return status


@pytest.mark.slow
def test_agent_applies_only_trusted_commits(world: World, processes: Processes,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    alice = make_key(tmp_path / "keys", "alice@example.invalid")
    mallory = make_key(tmp_path / "keys", "mallory@example.invalid")
    allowed = allowed_signers(tmp_path / "allowed_signers", alice)
    secret = tmp_path / "webhook-secret"
    secret.write_bytes(SECRET)
    world.publish("1.0.0", "baseline")
    world.publish("1.1.0", "improved")
    world.push("register 1.0.0 and 1.1.0 (unsigned: only the applied tip must be signed)")
    sign_with(world.repo, alice)
    first = world.deploy("1.0.0")
    server = processes.serve(world.store, world.token_file)
    agent = processes.agent(world, server.url, interval=600, extra=[
        "--trust", str(allowed), "--webhook-secret-file", str(secret)])
    assert "signed commits only" in agent.banner
    wait_for(lambda: _status(agent)["applied_commit"] == first, what="the signed deploy")
    assert serving_version(server.url) == "1.0.0"

    sign_with(world.repo, None)
    unsigned = world.deploy("1.1.0", message="deploy 1.1.0, unsigned")
    _refused(agent, unsigned, "d-unsigned", "unsigned")
    sign_with(world.repo, mallory)
    foreign = world.push("deploy 1.1.0, signed by a key not in --trust")
    status = _refused(agent, foreign, "d-foreign", "untrusted-key")
    assert mallory.fingerprint() in status["last_error"]
    tree = git(world.repo, "rev-parse", "HEAD^{tree}")
    forged = forge(world.repo, first, "deploy 1.1.0 (alice's signature, copied)", tree=tree,
                   parent=foreign)
    git(world.repo, "push", "-q", "origin", f"{forged}:refs/heads/main")
    _refused(agent, forged, "d-forged", "bad-signature")

    # forged, replayed and foreign webhooks change nothing, and say why
    assert _push_hook(agent, "d-forged") == 409  # a replayed delivery
    assert _push_hook(agent, "d-new", secret=b"not-the-secret-0123456789") == 401
    assert _push_hook(agent, "d-branch", ref="refs/heads/feature") == 202
    assert _status(agent)["refused_commit"] == forged
    assert serving_version(server.url) == "1.0.0"  # the host kept serving throughout

    # a force-push of an older signed state is refused; a newer signed one is applied
    sign_with(world.repo, alice)
    git(world.repo, "reset", "-q", "--hard", f"{first}^")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2000-01-01T00:00:00Z")
    set_environment(world.repo, "production", {MODEL: "1.1.0"})
    old = git_commit(world.repo, "deploy 1.1.0, signed, dated before the applied one")
    git(world.repo, "push", "-q", "--force", "origin", "main")
    _refused(agent, old, "d-old", "history-rewritten")
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    newer = world.push("signed by alice on the rewritten branch, newer")
    assert _push_hook(agent, "d-newer") == 202
    wait_for(lambda: _status(agent)["applied_commit"] == newer, what="the signed rewrite")
    status = _status(agent)
    assert (status["phase"], status["refused_commit"], status["refused_reason"]) == \
        ("healthy", None, None)
    assert serving_version(server.url) == "1.1.0"
