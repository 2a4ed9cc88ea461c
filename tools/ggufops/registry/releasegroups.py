"""Release groups: models of one environment that switch and roll back together.

    environment: production
    groups:
      rag: [embedder, generator]     # 2+ models of this file; a model in one group at most
    models:
      embedder: {version: 1.1.0}
      generator: {version: 2.1.0}

A host applies a group all or nothing (POST /admin/groups): if one member cannot be
loaded, every member keeps serving its previous version. `ggufops rollback --group rag`
(or `--models embedder,generator`) reverts them all in one commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ggufops.registry.overrides import OverrideProblem
from ggufops.registry.records import groups_of


def problems(env: str, data: Any) -> Iterator[OverrideProblem]:
    """Members that the file does not run, and models in two groups."""
    models = data.get("models") if isinstance(data, dict) else None
    models = models if isinstance(models, dict) else {}
    seen: dict[str, str] = {}
    for group, members in groups_of(data).items():
        for i, model in enumerate(members):
            where = ("groups", group, str(i))
            if model not in models:
                yield OverrideProblem(where, f"{env}: group {group} names {model}, which this "
                                      "environment does not run; add it under models: or "
                                      "remove it from the group")
            elif model in seen:
                yield OverrideProblem(where, f"{env}: {model} is in groups {seen[model]} and "
                                      f"{group}; a model belongs to one group at most")
            seen.setdefault(model, group)
