"""Trigger notifications: signed JSON and Slack payloads to a real local HTTP receiver."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ggufops.errors import UsageError
from ggufops.notify import Notifier, NotifyConfig, signature, verify
from testing.runtime import wait_for
from testing.webhook import webhook_receiver

SECRET = b"s3cret-for-tests"
EVENT = {"metric": "p95_ratio", "value": 2.31, "threshold": 1.5, "window_s": 120,
         "action": "rollback", "model": "llama3-instruct", "version": "2.1.0",
         "outcome": "pushed", "host": "host-a"}


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "notify-secret"
    path.write_bytes(SECRET + b"\n")
    return path


def test_json_events_are_signed_with_hmac_sha256(secret_file: Path) -> None:
    with webhook_receiver(SECRET) as hook:
        notifier = Notifier(NotifyConfig(hook.url, secret_file))
        notifier.send(EVENT)
        notifier.send({**EVENT, "metric": "tokens_ratio", "action": "alert",
                       "outcome": "alert"})
        wait_for(lambda: len(hook.received) == 2, what="two notifications")
    assert all(r.signed_ok for r in hook.received)
    assert [json.loads(r.body)["metric"] for r in hook.received] == ["p95_ratio", "tokens_ratio"]
    assert hook.received[0].signature == signature(SECRET, hook.received[0].body)
    assert not verify(b"another secret", hook.received[0].body, hook.received[0].signature)
    assert notifier.sent == 2 and notifier.failed == 0


def test_slack_format_is_a_text_payload(secret_file: Path) -> None:
    with webhook_receiver(SECRET) as hook:
        Notifier(NotifyConfig(hook.url, secret_file, "slack")).send(EVENT)
        wait_for(lambda: hook.received, what="a notification")
    (received,) = hook.received
    assert received.signed_ok
    assert json.loads(received.body) == {"text": (
        "ggufops rolled back: llama3-instruct@2.1.0 on host-a: p95_ratio = 2.31 (threshold "
        "1.5, window 120 s) - pushed")}


def test_a_receiver_that_hangs_never_blocks_the_sender(secret_file: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    notifier = Notifier(NotifyConfig(url, secret_file), timeout=60)
    try:
        for _ in range(150):
            notifier.send(EVENT)  # returns at once: the queue takes 100, the rest are dropped
        assert notifier.dropped >= 49 and notifier.sent == 0
    finally:
        notifier.close()
        listener.close()


def test_bad_notify_settings_are_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        Notifier(NotifyConfig("http://127.0.0.1:1/x", empty))
    with pytest.raises(UsageError, match="http"):
        Notifier(NotifyConfig("file:///etc/passwd"))
    with pytest.raises(UsageError, match="json or slack"):
        Notifier(NotifyConfig("http://127.0.0.1:1/x", format="xml"))
