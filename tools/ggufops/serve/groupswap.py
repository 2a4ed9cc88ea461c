"""All-or-nothing swaps of a release group in `ggufops serve`: POST /admin/groups.

Body: `{"group": "rag", "models": [<load body>, ...]}`, each load body as POST
/admin/models takes. Every model whose file (or role) changes is verified, loaded and
smoke-tested beside what serves, holding no lock a request needs; a config-only change is
only checked. Only when all of them are ready are they installed, in one critical section
of the table, so no request ever sees half of the group switched. If any one fails, every
model loaded for the group is freed and nothing changes: the group keeps serving its
previous versions, and the answer (422/404) names the member that failed and why.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ggufops.errors import GgufopsError
from ggufops.httpjson import HttpError
from ggufops.serve import configswap
from ggufops.serve.loadrequest import LoadRequest

if TYPE_CHECKING:
    from ggufops.serve.modeltable import LoadedModel, Loader

log = logging.getLogger("ggufops.serve")

GROUP_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass
class _Step:
    request: LoadRequest
    current: LoadedModel | None
    new: LoadedModel | None = None  # loaded for the group, not yet installed


def parse(data: Any) -> tuple[str, list[LoadRequest]]:
    """(group name, load requests) of a POST /admin/groups body; HttpError 400 if bad."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list) \
            or not data["models"]:
        raise HttpError(400, "the body must be {\"group\": NAME, \"models\": [load body, ...]}")
    group = data.get("group")
    if not isinstance(group, str) or not GROUP_NAME.match(group):
        raise HttpError(400, f"group: {group!r} is not a group name (^[a-z0-9][a-z0-9._-]*$)")
    requests = [LoadRequest.from_json(body) for body in data["models"]]
    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        raise HttpError(400, f"group {group}: a model (or canary) is named twice")
    return group, requests


def swap(loader: Loader, group: str, requests: list[LoadRequest]) -> list[dict[str, Any]]:
    """Load what changes, then install all of it at once; on any failure, nothing changes."""
    with loader.group_locks([r.name for r in requests]):
        steps = [_Step(r, loader.current_for(r)) for r in requests]
        try:
            for step in steps:
                _prepare(loader, group, step)
            _install(loader, steps)  # refuses before it changes anything (a canary alone)
        except BaseException:
            for step in steps:
                if step.new is not None:
                    step.new.close()
            raise
    log.info("group %s: %s", group, ", ".join(s.request.display_id for s in steps))
    return [{"name": s.request.name, "role": s.request.role, "version": s.request.version,
             "loaded": s.new is not None} for s in steps]


def _prepare(loader: Loader, group: str, step: _Step) -> None:
    request, current = step.request, step.current
    if current is not None and current.request == request:
        return
    if current is not None and configswap.same_model(current.request, request):
        configswap.check(current, request)
        return
    try:
        step.new = loader.prepare_tracked(request)
    except GgufopsError as e:  # the same kind of error (app.py maps it to its status)
        raise type(e)(f"group {group}: {request.display_id} cannot be loaded, so no model "
                      f"of the group changed: {e}") from None


def _install(loader: Loader, steps: list[_Step]) -> None:
    """One table transaction: every new model in, every config applied."""
    table = loader.table
    news = [s.new for s in steps if s.new is not None]
    configs = [(s.current, s.request) for s in steps
               if s.new is None and s.current is not None and s.current.request != s.request]
    retired = table.install_all(news, configs)
    for step in steps:
        if step.new is not None:
            loader.metrics.inc("ggufops_model_loads_total", (step.request.name, "success"))
    for _, request in configs:
        loader.metrics.inc(configswap.CONFIG_CHANGES, (request.name, request.version))
    for old in retired:
        log.info("group swap: %s drains", old.request.display_id)
