"""What a config-only change is: an environment entry whose inference overrides changed
while its version and canary did not. Plain functions over plain data, for history and for
the commands that write such changes (configcommit.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ggufops.errors import UsageError
from ggufops.registry import overrides

SHOWN_CHARS = 24  # a long value (a system prompt) is shown cut to this many characters


def overrides_json(entry: Mapping[str, Any]) -> str:
    """An entry's overrides as canonical JSON (`{}` without any): comparable, hashable."""
    return json.dumps(overrides.of(entry), sort_keys=True, separators=(",", ":"))


def describe_json(old: str, new: str) -> str:
    return describe(json.loads(old), json.loads(new))


def describe(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """`max_tokens 16 -> 8, system_prompt set`: what changed between two override sets."""
    parts = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if after is None:
            parts.append(f"{key} unset")
        elif before is None:
            parts.append(f"{key} set to {_shown(after)}")
        else:
            parts.append(f"{key} {_shown(before)} -> {_shown(after)}")
    return ", ".join(parts) or "no change"


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str) else str(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 2] + '…"'


_TYPES: dict[str, type] = {"temperature": float, "top_p": float, "max_tokens": int,
                           "system_prompt": str, "prompt_template": str}


def parse_setting(text: str) -> tuple[str, Any]:
    """`key=value` from the command line, typed by the key; UsageError naming the fix."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or key not in _TYPES:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE with KEY one of "
                         f"{', '.join(overrides.KEYS)}")
    kind = _TYPES[key]
    try:
        value: Any = kind(raw) if kind is not str else raw
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"--set {text!r}: {key} must be {what}") from None
    return key, value


def apply_settings(current: Mapping[str, Any], settings: list[tuple[str, Any]],
                   unset: list[str]) -> dict[str, Any]:
    """The overrides after `--set` and `--unset`."""
    result = dict(current)
    for key in unset:
        if key not in overrides.KEYS:
            raise UsageError(f"--unset {key!r}: not an override; use one of "
                             f"{', '.join(overrides.KEYS)}")
        result.pop(key, None)
    result.update(settings)
    return result
