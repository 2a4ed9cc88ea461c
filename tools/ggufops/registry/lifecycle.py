"""A version's lifecycle stage, kept outside its immutable version file.

Stages: development -> candidate -> production -> deprecated -> archived.

The first three are derived from where a version has run (the environment files and
their git history); nobody writes them down:
- development: registered, never in an environment;
- candidate: has run in an environment before the last one in `promotion.order`;
- production: has run in the last environment of `promotion.order` (primary or canary).

The last two are decisions, recorded in an append-only file per model,
`registry/<model>/lifecycle.yaml`, by `ggufops deprecate`, `archive` and `restore`:

    model: llama3-instruct
    events:
      - version: 1.0.0
        status: deprecated        # deprecated | archived | restored
        at: "2026-11-30T14:00:00Z"
        by: "Ada <ada@example.com>"
        reason: "answers in the wrong language"

A `restored` event undoes the newest of archive, then deprecate: an archived version
comes back as deprecated if it was deprecated before, else at its derived stage.
Entries are never edited or removed (`validate --base` compares with the base branch).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import git, yamlio
from ggufops.errors import LifecycleError, VersionArchived, VersionDeprecated, YamlError
from ggufops.registry.registry import POLICY_FILE, REGISTRY_DIR, VersionRef

LIFECYCLE_FILE = "lifecycle.yaml"

DEVELOPMENT = "development"
CANDIDATE = "candidate"
PRODUCTION = "production"
DEPRECATED = "deprecated"
ARCHIVED = "archived"
STAGES = (DEVELOPMENT, CANDIDATE, PRODUCTION, DEPRECATED, ARCHIVED)

RESTORED = "restored"  # an event, not a stage
EVENT_STATUSES = (DEPRECATED, ARCHIVED, RESTORED)

HEADER = (
    "# Lifecycle of {model}'s versions: append-only (ggufops deprecate / archive / restore\n"
    "# add entries; validate refuses edits to earlier ones). Version files stay untouched.\n"
)


@dataclass(frozen=True)
class Event:
    """One recorded status change of one version."""

    version: str
    status: str
    at: str
    by: str
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": self.version, "status": self.status,
                                "at": self.at, "by": self.by}
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass
class Flags:
    """The recorded decisions about one version, after folding its events."""

    deprecated: bool = False
    archived: bool = False
    history: list[Event] = field(default_factory=list)


def relpath(model: str) -> str:
    return f"{REGISTRY_DIR}/{model}/{LIFECYCLE_FILE}"


def parse_events(raw: str | bytes | None, where: str) -> list[Event]:
    """The events of a lifecycle file's text (None: no file); LifecycleError if malformed."""
    if raw is None:
        return []
    try:
        data = yamlio.parse(raw, Path(where)).data
    except YamlError as e:
        raise LifecycleError(f"{e}; fix the YAML (entries are append-only)") from None
    return events_of(data, where)


def events_of(data: Any, where: str) -> list[Event]:
    items = data.get("events") if isinstance(data, dict) else None
    if data is None or items is None:
        return []
    if not isinstance(items, list):
        raise LifecycleError(f"{where}: events must be a list of entries")
    return [_event(item, where, i) for i, item in enumerate(items)]


def _event(item: Any, where: str, index: int) -> Event:
    if not isinstance(item, dict) or not all(k in item for k in ("version", "status", "at")):
        raise LifecycleError(f"{where}: events[{index}] needs version, status and at")
    return Event(str(item["version"]), str(item["status"]), str(item["at"]),
                 str(item.get("by") or ""), item.get("reason"))


def read_events(root: Path, model: str) -> list[Event]:
    path = root / relpath(model)
    return parse_events(path.read_bytes() if path.is_file() else None, relpath(model))


def fold(events: Iterable[Event]) -> dict[str, Flags]:
    """version -> its recorded decisions, applying the events in order."""
    flags: dict[str, Flags] = {}
    for event in events:
        state = flags.setdefault(event.version, Flags())
        state.history.append(event)
        apply_event(state, event.status)
    return flags


def apply_event(state: Flags, status: str) -> None:
    if status == DEPRECATED:
        state.deprecated = True
    elif status == ARCHIVED:
        state.archived = True
    elif status == RESTORED:
        if state.archived:
            state.archived = False
        else:
            state.deprecated = False


def transition_error(state: Flags, status: str, ref: str) -> str | None:
    """Why `status` cannot be recorded for a version in `state`; None when it can."""
    if status == DEPRECATED and (state.deprecated or state.archived):
        now = ARCHIVED if state.archived else DEPRECATED
        return f"{ref} is already {now}"
    if status == ARCHIVED and state.archived:
        return f"{ref} is already archived"
    if status == RESTORED and not (state.archived or state.deprecated):
        return f"{ref} is neither archived nor deprecated; there is nothing to restore"
    return None


def stage(flags: Flags | None, environments_ever: Iterable[str], order: list[str]) -> str:
    """The stage of a version: its recorded decision, else where it has run."""
    if flags is not None and flags.archived:
        return ARCHIVED
    if flags is not None and flags.deprecated:
        return DEPRECATED
    envs = set(environments_ever)
    if order and order[-1] in envs:
        return PRODUCTION
    if envs:
        return CANDIDATE
    return DEVELOPMENT


def render_new(model: str, event: Event) -> str:
    return HEADER.format(model=model) + f"model: {model}\nevents:\n" + render_event(event)


def render_event(event: Event) -> str:
    """One list entry, appended as text so every earlier byte stays as it was."""
    body = yamlio.dump([event.as_dict()])
    return "".join(f"  {line}\n" for line in body.rstrip("\n").splitlines())


def appended(text: str | None, model: str, event: Event) -> str:
    """The lifecycle file's text with `event` appended (a new file when `text` is None)."""
    if text is None or not parse_events(text, relpath(model)):
        return render_new(model, event)
    return (text if text.endswith("\n") else text + "\n") + render_event(event)


WARN = "warn"
BLOCK = "block"


# --- messages shared by validate, deploy and rollback ----------------------------------------

def archived_message(ref: VersionRef, action: str) -> str:
    return (f"{ref} is archived ({relpath(ref.name)}), so it cannot be {action}: "
            f"restore it first (`ggufops restore {ref}`, then merge that change) or pick "
            "another version")


def deprecated_message(ref: VersionRef, flags: Flags, env: str) -> str:
    reason = next((e.reason for e in reversed(flags.history)
                   if e.status == DEPRECATED and e.reason), None)
    why = f" ({reason})" if reason else ""
    return (f"{ref} is deprecated{why} and enters {env}; deploy a newer version, or "
            f"`ggufops restore {ref}` if the deprecation no longer holds")


# --- reading state at a commit ------------------------------------------------------------------

def flags_at(root: Path, commit: str, ref: VersionRef) -> Flags:
    path = relpath(ref.name)
    events = parse_events(git.show_file(root, commit, path), f"{commit[:10]}:{path}")
    return fold(events).get(ref.version, Flags())


def deprecated_rule(policy: Any) -> str:
    section = policy.get("lifecycle") if isinstance(policy, dict) else None
    rule = section.get("deprecated") if isinstance(section, dict) else None
    return BLOCK if rule == BLOCK else WARN


def policy_at(root: Path, commit: str) -> Any:
    raw = git.show_file(root, commit, POLICY_FILE)
    try:
        return yamlio.parse(raw, Path(POLICY_FILE)).data if raw is not None else None
    except YamlError:
        return None


# --- guards for deploy and rollback -----------------------------------------------------------

def deploy_guard(root: Path, commit: str, ref: VersionRef, env: str) -> list[str]:
    """Warnings for deploying `ref` to `env` on `commit`; raises when the lifecycle forbids it."""
    flags = flags_at(root, commit, ref)
    if flags.archived:
        raise VersionArchived(archived_message(ref, f"deployed to {env}"))
    if not flags.deprecated:
        return []
    message = deprecated_message(ref, flags, env)
    if deprecated_rule(policy_at(root, commit)) == BLOCK:
        raise VersionDeprecated(f"{message} (policy lifecycle.deprecated: block)")
    return [message]


def rollback_guard(root: Path, commit: str, ref: VersionRef, env: str) -> list[str]:
    """A rollback may return to a deprecated version (with a warning), never to an archived one."""
    flags = flags_at(root, commit, ref)
    if flags.archived:
        raise VersionArchived(archived_message(ref, f"rolled back to in {env}"))
    return [f"rolling back to {ref}, which is deprecated"] if flags.deprecated else []
