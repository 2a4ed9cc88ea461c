"""Rollout waves and per-selector versions: which hosts go first, which run what.

An environment file may order its hosts in waves and pin a version for hosts with given
labels (a partial rollback reverts one segment's hosts, as a git change anyone can read):

    rollout:
      waves:                     # in order; a host is in the first wave its labels match,
        - {wave: "1"}            # hosts matching none go last
        - {wave: "2"}
    models:
      llama3-instruct:
        version: 2.1.0
        segments:                # the first whose selector matches a host's labels wins
          - selector: {zone: eu}
            version: 2.0.0

A host in a later wave applies a commit only once every host of the earlier waves reports
(in its fleet status object) that commit applied and healthy. A rollback (a commit with a
`Rollback-Of:` trailer, or git's "This reverts commit") skips the waves: every host applies
it at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ggufops.fleet.status import HostReport
from ggufops.registry.records import EnvEntry, matches

_REVERT = re.compile(r"^(Rollback-Of:\s*[0-9a-f]{7,40}|This reverts commit [0-9a-f]{7,40})",
                     re.MULTILINE)

Selector = Mapping[str, str]


def wave_index(waves: list[dict[str, str]], labels: Mapping[str, str]) -> int:
    """The host's wave: the first whose selector matches; len(waves) when none does."""
    return next((i for i, w in enumerate(waves) if matches(w, labels)), len(waves))


def version_for(entry: EnvEntry, labels: Mapping[str, str]) -> str:
    """The model version a host with `labels` runs: its segment's, else the entry's."""
    for segment in entry.segments:
        if segment.runs_on(labels):
            return segment.version
    return entry.version


def is_rollback(message: str) -> bool:
    return _REVERT.search(message) is not None


@dataclass(frozen=True)
class WaveGate:
    """Whether a host of wave `wave` may apply `commit` now, and whom it waits for."""

    ready: bool
    waiting_for: list[str]


def gate(waves: list[dict[str, str]], labels: Mapping[str, str], commit: str,
         reports: Iterable[HostReport], host: str) -> WaveGate:
    mine = wave_index(waves, labels)
    earlier = [r for r in reports if r.host != host and wave_index(waves, r.labels) < mine]
    waiting = sorted(r.host for r in earlier
                     if r.applied_commit != commit or r.phase != "healthy")
    return WaveGate(not waiting, waiting)
