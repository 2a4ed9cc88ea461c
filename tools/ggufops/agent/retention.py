"""Which artifacts the sync agent's store keeps, and which it may delete.

The store keeps the last `keep` artifacts per model (most recently used first, from the
apply log), and never one that is protected: the artifacts of the state being applied, of
the state applied before it, and of the last two desired states the agent planned (so a
rollback pushed during a download, or the download a newer commit superseded, never has
to fetch again what it just had). One sha256 kept for any model is kept for all.
"""

from __future__ import annotations

from collections.abc import Iterable

from ggufops.agent.applylog import StoredArtifact

DESIRED_STATES_KEPT = 2  # the current desired state and the previous one


def evictable(by_model: dict[str, list[StoredArtifact]], keep: int,
              protected: Iterable[str]) -> list[StoredArtifact]:
    """The artifacts retention may delete: beyond the last `keep` of their model, and
    neither protected nor kept for another model."""
    kept = set(protected)
    beyond: list[StoredArtifact] = []
    for arts in by_model.values():
        kept.update(a.sha256 for a in arts[:keep])
        beyond.extend(arts[keep:])
    return [a for a in beyond if a.sha256 not in kept]


def remember_desired(history: list[list[str]], shas: Iterable[str]) -> list[list[str]]:
    """The desired-state history with `shas` as the newest state (the last N distinct)."""
    state = sorted(set(shas))
    if history and history[-1] == state:
        return history
    return [*history, state][-DESIRED_STATES_KEPT:]
