"""Status changes (deprecate, archive, restore) as rows of `ggufops history`, kind `lifecycle`.

They come from the commits that changed `registry/*/lifecycle.yaml` and carry the
trailers `ggufops deprecate/archive/restore` write (Model, Version, Lifecycle, Reason):
one more `git log` walk, merged into the environment's rows in the order the commits
reached the default branch.
"""

from __future__ import annotations

from pathlib import Path

from ggufops import git
from ggufops.gitops import history
from ggufops.gitops.history import Deployment
from ggufops.gitops.lifecyclechange import MODEL, REASON, STATUS, VERSION
from ggufops.registry.lifecycle import LIFECYCLE_FILE
from ggufops.registry.registry import REGISTRY_DIR

LIFECYCLE = "lifecycle"
PATHSPEC = f"{REGISTRY_DIR}/*/{LIFECYCLE_FILE}"


def lifecycle_rows(root: Path, env: str, ref: str, models: set[str] | None) -> list[Deployment]:
    """One row per recorded status change of a model in `models` (None: every model)."""
    walk = history._walk(root, ref, PATHSPEC)
    rows: list[Deployment] = []
    for commit in walk.commits:
        t = commit.trailers
        model, version, status = (t.get(k.lower()) for k in (MODEL, VERSION, STATUS))
        if not (model and version and status) or (models is not None and model not in models):
            continue
        row = history._event(commit, walk, env, LIFECYCLE, model=model, from_version=version,
                             to_version=version, rollback_of=None, reason=t.get(REASON.lower()))
        row.status = status
        rows.append(row)
    return rows


def merge(root: Path, env: str, ref: str, deployments: list[Deployment],
          model: str | None) -> list[Deployment]:
    """`deployments` with the status changes of their models (or of `model`) merged in."""
    models = {model} if model else {d.model for d in deployments}
    rows = lifecycle_rows(root, env, ref, models)
    if not rows:
        return deployments
    mainline = git.out(["rev-list", "--first-parent", ref], root).split()
    position = {sha: len(mainline) - i for i, sha in enumerate(mainline)}
    merged = [(position.get(d.landed_by, 0), 0, i, d) for i, d in enumerate(deployments)]
    merged += [(position.get(r.landed_by, 0), 1, i, r) for i, r in enumerate(rows)]
    return [d for *_, d in sorted(merged, key=lambda m: m[:3])]
