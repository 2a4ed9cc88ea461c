"""Trust: signed commits (deploy/rollback sign, the agent verifies), history rewrites, and
the GitHub webhook on POST /sync. Real ssh-keygen keys, real git, real HTTP."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ggufops import git
from ggufops.agent import trust, webhook
from ggufops.agent.status import status_server
from ggufops.errors import GitError, TrustError, UntrustedCommit
from testing.repos import git as run_git
from testing.repos import git_commit
from testing.runtime import http
from testing.scratch import MODEL, ScratchS3, cli, ship
from testing.signing import (
    SigningKey,
    allowed_signers,
    forge,
    make_key,
    sign_with,
    signature,
    signing_global_config,
)

# --- the allowed_signers file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningKey]:
    where = tmp_path_factory.mktemp("keys")
    return {who: make_key(where, f"{who}@example.invalid") for who in ("alice", "mallory")}


def test_allowed_signers_file_is_checked_line_by_line(tmp_path: Path,
                                                      keys: dict[str, SigningKey]) -> None:
    good = allowed_signers(tmp_path / "ok", keys["alice"])
    assert trust.check_allowed_signers(good) == 1
    assert trust.TrustPolicy.load(good).allowed_signers == good.resolve()
    bad = tmp_path / "bad"
    bad.write_text(f"# ok\n{keys['alice'].allowed_line()}\nalice ssh-ed25519 not-base64!\n")
    with pytest.raises(TrustError, match=rf"{bad}:3: not an allowed_signers line"):
        trust.check_allowed_signers(bad)
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n\n")
    with pytest.raises(TrustError, match="lists no keys"):
        trust.TrustPolicy.load(empty)
    with pytest.raises(TrustError, match="cannot read the --trust file"):
        trust.TrustPolicy.load(tmp_path / "missing")


# --- verdicts on commits ----------------------------------------------------------------------


def _commit_as(repo: Path, key: SigningKey | None, message: str, when: int) -> str:
    sign_with(repo, key)
    os.environ["GIT_COMMITTER_DATE"] = f"{when} +0000"
    try:
        return git_commit(repo, message)
    finally:
        del os.environ["GIT_COMMITTER_DATE"]


def test_only_a_good_signature_by_a_listed_key_is_trusted(
        tmp_path: Path, keys: dict[str, SigningKey], registry_repo: Path) -> None:
    allowed = allowed_signers(tmp_path / "allowed", keys["alice"])
    policy = trust.TrustPolicy.load(allowed)
    repo = registry_repo
    good = _commit_as(repo, keys["alice"], "signed by alice", 1_800_000_000)
    assert trust.verify(repo, good, None, policy) == trust.Signature(
        "G", keys["alice"].fingerprint(), "alice@example.invalid")
    cases = {
        "unsigned": _commit_as(repo, None, "unsigned", 1_800_000_100),
        "untrusted-key": _commit_as(repo, keys["mallory"], "mallory", 1_800_000_200),
        "bad-signature": forge(repo, good, "deploy something else, with alice's signature"),
    }
    for reason, commit in cases.items():
        with pytest.raises(UntrustedCommit) as refused:
            trust.verify(repo, commit, None, policy)
        assert refused.value.reason == reason
        assert commit[:12] in str(refused.value)
    assert keys["mallory"].fingerprint() in _message(repo, cases["untrusted-key"], policy)


def _message(repo: Path, commit: str, policy: trust.TrustPolicy) -> str:
    with pytest.raises(UntrustedCommit) as refused:
        trust.verify(repo, commit, None, policy)
    return str(refused.value)


def test_a_rewritten_history_is_refused_unless_signed_and_newer_or_allowed(
        tmp_path: Path, keys: dict[str, SigningKey], registry_repo: Path) -> None:
    repo = registry_repo
    alice = keys["alice"]
    base = _commit_as(repo, alice, "base", 1_800_000_000)
    applied = _commit_as(repo, alice, "applied", 1_800_000_100)
    ahead = _commit_as(repo, None, "fast-forward", 1_800_000_200)
    run_git(repo, "reset", "-q", "--hard", base)
    rewritten = _commit_as(repo, None, "rewritten, unsigned", 1_800_000_300)
    older_signed = _commit_as(repo, alice, "rewritten, signed, older", 1_800_000_050)
    newer_signed = _commit_as(repo, alice, "rewritten, signed, newer", 1_800_000_400)
    plain = trust.TrustPolicy()
    signed = trust.TrustPolicy.load(allowed_signers(tmp_path / "allowed", alice))

    assert trust.verify(repo, ahead, applied, plain) is None  # forward: fine
    for commit, policy in ((rewritten, plain), (base, plain), (older_signed, signed),
                           (base, signed)):  # an ancestor pushed again: a replay
        with pytest.raises(UntrustedCommit) as refused:
            trust.verify(repo, commit, applied, policy)
        assert refused.value.reason == "history-rewritten", commit
        assert f"keeps serving {applied[:12]}" in str(refused.value)
    assert trust.verify(repo, newer_signed, applied, signed) is not None
    allow = trust.TrustPolicy(allow_rewrite=True)
    assert trust.verify(repo, rewritten, applied, allow) is None
    with pytest.raises(UntrustedCommit, match="not signed"):  # --allow-rewrite keeps --trust
        trust.verify(repo, rewritten, applied, trust.TrustPolicy(signed.allowed_signers, True))


# --- deploy and rollback sign when git is set up to ---------------------------------------------


def test_deploy_and_rollback_sign_with_the_users_ssh_key(
        scratch_s3: ScratchS3, keys: dict[str, SigningKey], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = scratch_s3
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(signing_global_config(tmp_path, keys["alice"])))
    allowed = allowed_signers(tmp_path / "allowed", keys["alice"])
    before = s.head()
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0")
    result = cli(s.root, "rollback", "--env", "production", "--push")
    assert result.exit_code == 0, result.output + result.stderr
    made = run_git(s.root, "rev-list", f"{before}..main").split()
    assert len(made) == 5  # 2 deploys x 2 environments + the rollback
    for commit in made:
        assert signature(s.root, commit, allowed) == ("G", "alice@example.invalid")
    assert signature(s.root, before, allowed)[0] == "N"  # made before signing was set up


def test_a_signing_failure_says_what_to_fix(scratch_s3: ScratchS3, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    missing = SigningKey(tmp_path / "no-such-key", "nobody@example.invalid")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(signing_global_config(tmp_path, missing)))
    head = scratch_s3.head()
    with pytest.raises(GitError, match=r"signing the commit failed.*user\.signingKey"):
        git.commit_files(scratch_s3.root, head, {"x": b"y"}, "change")
    result = cli(scratch_s3.root, "deploy", f"{MODEL}@1.0.0", "--env", "staging", "--direct",
                 "--push")
    assert result.exit_code == 1 and "signing the commit failed" in result.stderr
    assert scratch_s3.head() == head == scratch_s3.remote_head()  # nothing half-done


# --- the agent's own signing key: the revert it pushes when a trigger fires ---------------------


def _agent_start(tmp_path: Path, *extra: str) -> tuple[int, str]:
    """`ggufops agent` with --trust and a push credential: what it says before starting."""
    from click.testing import CliRunner

    from ggufops.cli import main

    args = ["agent", "--repo", str(tmp_path / "remote.git"), "--env", "production", "--store",
            str(tmp_path / "store"), "--server", "http://127.0.0.1:9", "--state-dir",
            str(tmp_path / "state"), "--status-port", "-1", "--no-fleet-status",
            "--push-url", str(tmp_path / "remote.git"), *extra]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def test_trust_and_a_push_credential_need_a_signing_key_that_trust_lists(
        tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    allowed = allowed_signers(tmp_path / "allowed", keys["alice"])
    code, output = _agent_start(tmp_path, "--trust", str(allowed))
    assert code == 1
    assert output.startswith(f"error: --trust {allowed.resolve()} with a trigger push credential")
    assert output.strip().endswith("pass --signing-key PATH (GGUFOPS_SIGNING_KEY), an SSH key "
                                   "listed there")
    code, output = _agent_start(tmp_path, "--trust", str(allowed), "--signing-key",
                                str(keys["mallory"].private))
    assert code == 1
    assert f"--signing-key {keys['mallory'].private}: its public key is not in --trust" in output
    assert f"add the line 'ggufops-agent namespaces=\"git\" {keys['mallory'].public}'" in output
    locked = tmp_path / "locked"
    run = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)]
    subprocess.run(run, check=True)
    code, output = _agent_start(tmp_path, "--signing-key", str(locked))
    assert code == 1 and "not an unencrypted SSH private key" in output


# --- the webhook --------------------------------------------------------------------------------


SECRET = b"webhook-secret-0123456789abcdef"


def _delivery(body: bytes, event: str = "push", delivery: str = "d-1",
              secret: bytes = SECRET) -> dict[str, str]:
    return {"X-Hub-Signature-256": webhook.sign(secret, body), "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery, "Content-Type": "application/json"}


def test_webhook_decisions() -> None:
    receiver = webhook.WebhookReceiver(SECRET, "main", remember=2)
    push_main = b'{"ref": "refs/heads/main", "after": "abc"}'
    ok = receiver.handle(_delivery(push_main), push_main)
    assert (ok.status, ok.trigger) == (202, True)
    replay = receiver.handle(_delivery(push_main), push_main)
    assert (replay.status, replay.trigger) == (409, False)
    forged = receiver.handle(_delivery(push_main, delivery="d-2", secret=b"x" * 32), push_main)
    assert (forged.status, forged.trigger) == (401, False)
    tampered = receiver.handle(_delivery(push_main, delivery="d-3"), push_main + b" ")
    assert (tampered.status, tampered.trigger) == (401, False)
    unsigned = {k: v for k, v in _delivery(push_main, delivery="d-4").items()
                if k != "X-Hub-Signature-256"}
    assert receiver.handle(unsigned, push_main).status == 401
    other = b'{"ref": "refs/heads/feature"}'
    ignored = receiver.handle(_delivery(other, delivery="d-5"), other)
    assert (ignored.status, ignored.trigger) == (202, False)
    assert "refs/heads/feature" in ignored.body["ignored"]
    issue = receiver.handle(_delivery(b"{}", "issues", "d-6"), b"{}")
    assert (issue.status, issue.trigger, "ignored" in issue.body) == (202, False, True)
    ping = receiver.handle({k.lower(): v for k, v in _delivery(b"{}", "ping", "d-7").items()},
                           b"{}")  # header names in any case
    assert (ping.status, ping.body["pong"]) == (200, True)
    # bounded memory: with room for 2 ids, d-1 was forgotten long ago (a redelivery works)
    assert receiver.handle(_delivery(push_main), push_main).status == 202
    assert len(receiver.deliveries._seen) == 2


def test_webhook_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert webhook.read_secret(path) == SECRET
    path.write_text("short")
    with pytest.raises(TrustError, match="shorter than 16"):
        webhook.read_secret(path)


class _Recorder:
    """The agent side of the status endpoint: counts triggers."""

    def __init__(self) -> None:
        self.triggers = 0

    def snapshot(self) -> dict[str, Any]:
        return {"phase": "healthy"}

    def render_metrics(self) -> str:
        return ""

    def trigger(self) -> None:
        self.triggers += 1


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_post_sync_with_a_secret_acts_only_on_signed_pushes_over_http() -> None:
    agent = _Recorder()
    server = status_server(agent, "127.0.0.1", 0, webhook.WebhookReceiver(SECRET, "main"))
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/sync"
    try:
        push = b'{"ref": "refs/heads/main"}'
        assert _post(url, push, {})[0] == 401  # `curl -X POST` no longer triggers
        assert _post(url, push, _delivery(push, secret=b"y" * 20))[0] == 401
        assert agent.triggers == 0
        assert _post(url, push, _delivery(push, delivery="a"))[0] == 202
        assert _post(url, push, _delivery(push, delivery="a"))[0] == 409  # replayed
        form = b"payload=%7B%22ref%22%3A+%22refs%2Fheads%2Fmain%22%7D"
        headers = {**_delivery(form, delivery="b"),
                   "Content-Type": "application/x-www-form-urlencoded"}
        assert _post(url, form, headers)[0] == 202
        assert agent.triggers == 2
        big = b'{"ref": "refs/heads/main", "pad": "' + b"x" * 200_000 + b'"}'
        assert _post(url, big, _delivery(big, delivery="c"))[0] == 202  # a large push
        assert agent.triggers == 3
        assert http("GET", url.replace("/sync", "/healthz"))[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_agent_status_text_names_the_refused_commit_and_why() -> None:
    from ggufops.agent.status import format_status

    text = format_status({"status": {"phase": "degraded", "refused_commit": "ab" * 20,
                                     "refused_reason": "untrusted-key"}, "attempts": []})
    assert "refused commit:  abababababab (untrusted-key)" in text
