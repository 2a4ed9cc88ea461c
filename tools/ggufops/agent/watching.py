"""What the agent's watchers share (rollback triggers, canary analysis): reading the
server's request window, a bounded log of their events (sent to the notifier too), and the
refusal said when a trusting agent could not sign what it would push."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ggufops.errors import InvalidDesiredState
from ggufops.httpjson import error_message, request_json, rfc3339

log = logging.getLogger("ggufops.agent")

Notify = Callable[[dict[str, Any]], None]
EVENTS_KEPT = 20


def request_window(server: str, token: str | None, model: str, since: float,
                   who: str) -> dict[str, Any] | None:
    """GET /admin/requests of `model` since `since` (None, logged as `who`, when the server
    cannot be read: the caller judges again next tick)."""
    url = f"{server}/admin/requests?model={quote(model)}&since={since:.3f}"
    try:
        reply = request_json("GET", url, token=token, timeout=10.0)
    except OSError as e:
        log.warning("%s: cannot read %s: %s", who, url, e)
        return None
    if reply.status != 200 or not isinstance(reply.data, dict):
        log.warning("%s: %s answered %s", who, url, error_message(reply))
        return None
    return reply.data


def rows(window: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The well-formed rows (`requests` or `ratings`) of a request window."""
    found = window.get(key)
    return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []


class EventLog:
    """The newest events of a watcher, for GET /status; each also goes to `notify`."""

    def __init__(self, host: str, notify: Notify | None = None) -> None:
        self.host = host
        self.notify = notify
        self.events: list[dict[str, Any]] = []

    def record(self, event: dict[str, Any], now: float) -> None:
        event = {**event, "host": self.host, "at": rfc3339(now)}
        self.events = [*self.events, event][-EVENTS_KEPT:]  # a new list: /status reads it
        if self.notify is not None:
            self.notify(event)


def cannot_sign(what: str) -> str:
    """Why a trusting agent without --signing-key pushes nothing: `what` names the commit."""
    return (f"not pushed: this agent runs with --trust but no --signing-key, so every "
            f"trusting host, this one too, would refuse an unsigned {what}")


def check_numbers(section: str, entry: dict[str, Any], *, counts: tuple[str, ...] = (),
                  positive: tuple[str, ...] = ()) -> dict[str, Any]:
    """`entry` with its values checked. The agent applies only commits that pass
    `validate` (agent/plan runs it on each), which refuses wrong types and YAML's `.inf`
    and `.nan`; these checks guard the readers that see a policy without that validation
    (tests, tools) the same way, since `.inf` would break every time shown in /status.
    InvalidDesiredState names the key. `counts` are whole numbers (50.0, which the schema
    accepts as an integer, is 50), `positive` above 0; None is left to the caller."""
    checked = dict(entry)
    for key, value in entry.items():
        if value is None:
            continue
        whole = key in counts and isinstance(value, float) and value.is_integer()
        kind = int if key in counts and not whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or \
                not math.isfinite(value) or (key in positive and value <= 0):
            what = "a whole number" if key in counts else \
                "a number above 0" if key in positive else "a number"
            raise InvalidDesiredState(f"registry/policy.yaml: {section}.{key} must be {what}; "
                                      f"got {value!r}")
        if whole:
            checked[key] = int(value)
    return checked
