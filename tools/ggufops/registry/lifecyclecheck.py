"""What the lifecycle forbids: validate's checks, and the guards deploy and rollback call.

- A lifecycle file matches its schema, names its own model and registered versions, and
  every event is a legal move from the state before it.
- With a base ref: the file is append-only (the base's entries are a prefix of today's).
- An environment never runs an archived version (primary or canary).
- A version newly entering an environment while deprecated: a warning, or a problem when
  the base's policy says `lifecycle.deprecated: block`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufops import git, yamlio
from ggufops.errors import LifecycleError
from ggufops.registry import lifecycle, schemas
from ggufops.registry.records import NO_ENTRY, environment_from_data, environment_in
from ggufops.registry.registry import REGISTRY_DIR, RESERVED_DIRS, VersionRef

if TYPE_CHECKING:
    from ggufops.registry.validate import Checker, State

# --- validate ---------------------------------------------------------------------------------

def check_repo(checker: Checker, state: State, base_sha: str | None,
               warnings: list[Any]) -> None:
    """Every lifecycle problem in the checkout (and against the base commit, when given)."""
    paths = _lifecycle_paths(state.root)
    validator = schemas.optional_validator(state.root, SCHEMA, "lifecycle files") if paths \
        else None
    docs = _read_lifecycle_files(checker, state, paths, validator) if validator else {}
    flags = {model: lifecycle.fold(lifecycle.events_of(doc.data, checker.rel(doc.path)))
             for model, doc in docs.items()}
    _check_archived_running(checker, state, flags)
    if base_sha is None:
        return
    _check_append_only(checker, state, docs, base_sha)
    _check_deprecated_entering(checker, state, flags, base_sha, warnings)


SCHEMA = f"{REGISTRY_DIR}/schema/lifecycle.schema.json"


def _lifecycle_paths(root: Path) -> list[Path]:
    found = sorted((root / REGISTRY_DIR).glob(f"*/{lifecycle.LIFECYCLE_FILE}"))
    return [p for p in found if p.parent.name not in RESERVED_DIRS]


def _read_lifecycle_files(checker: Checker, state: State, paths: list[Path],
                          validator: schemas.Validator) -> dict[str, yamlio.Document]:
    docs: dict[str, yamlio.Document] = {}
    for path in paths:
        doc = checker.read(path)
        if doc is None or not checker.schema(doc, validator):
            continue
        if _check_file(checker, state, doc, path.parent.name):
            docs[path.parent.name] = doc
    return docs


def _check_file(checker: Checker, state: State, doc: yamlio.Document, model: str) -> bool:
    if doc.data["model"] != model:
        checker.add(doc, ["model"], f"model: {doc.data['model']!r} disagrees with the "
                    f"directory {model!r}; set it to {model!r}", "lifecycle")
        return False
    ok = True
    flags: dict[str, lifecycle.Flags] = {}
    for i, item in enumerate(doc.data["events"]):
        ref = VersionRef(model, item["version"])
        if ref not in state.versions:
            checker.add(doc, ["events", i, "version"], f"events[{i}].version: {ref} is not "
                        f"registered (no {REGISTRY_DIR}/{model}/{ref.version}.yaml)", "lifecycle")
            ok = False
            continue
        current = flags.setdefault(ref.version, lifecycle.Flags())
        why = lifecycle.transition_error(current, item["status"], str(ref))
        if why is not None:
            checker.add(doc, ["events", i, "status"], f"events[{i}].status: {item['status']} "
                        f"is not allowed here: {why} at that point", "lifecycle")
            ok = False
        lifecycle.apply_event(current, item["status"])
    return ok


def _running(state: State) -> list[tuple[str, yamlio.Document, str, str, list[str | int]]]:
    """(env, doc, model, version, path in the doc) of every primary and canary version."""
    found: list[tuple[str, yamlio.Document, str, str, list[str | int]]] = []
    for env, doc in state.environments.items():
        for model, entry in environment_from_data(env, doc.data).models.items():
            found.append((env, doc, model, entry.version, ["models", model, "version"]))
            canary = entry.canary_version
            if canary is not None:
                found.append((env, doc, model, canary,
                              ["models", model, "canary", "version"]))
    return found


def _check_archived_running(checker: Checker, state: State,
                            flags: dict[str, dict[str, lifecycle.Flags]]) -> None:
    for env, doc, model, version, where in _running(state):
        state_of = flags.get(model, {}).get(version)
        if state_of is not None and state_of.archived:
            ref = VersionRef(model, version)
            checker.add(doc, where, lifecycle.archived_message(ref, f"run in {env}"), "lifecycle")


def _check_append_only(checker: Checker, state: State, docs: dict[str, yamlio.Document],
                       base_sha: str) -> None:
    base_paths = git.ls_tree(state.root, base_sha, [REGISTRY_DIR])
    for path in sorted(p for p in base_paths if p.endswith(f"/{lifecycle.LIFECYCLE_FILE}")):
        model = path.split("/")[1]
        if not (state.root / path).is_file():
            checker.add(path, None, f"deleted {path}, which is append-only; restore it "
                        "(status changes are new entries: ggufops deprecate/archive/restore)",
                        "lifecycle")
            continue
        doc = docs.get(model)
        if doc is not None:
            _compare_with_base(checker, state.root, doc, path, base_sha)


def _compare_with_base(checker: Checker, root: Path, doc: yamlio.Document, path: str,
                       base_sha: str) -> None:
    try:
        before = lifecycle.parse_events(git.show_file(root, base_sha, path), path)
    except LifecycleError:
        return  # the base's file was malformed: nothing reliable to compare against
    now = lifecycle.events_of(doc.data, path)
    for i, old in enumerate(before):
        if i >= len(now) or now[i] != old:
            what = "removed" if i >= len(now) else "rewrote"
            checker.add(doc, ["events", min(i, max(len(now) - 1, 0))], f"{what} events[{i}] "
                        f"({old.version} {old.status} at {old.at}) of {path}, which is "
                        "append-only: restore the earlier entries and add a new one "
                        "(ggufops deprecate/archive/restore)", "lifecycle")
            return


def _check_deprecated_entering(checker: Checker, state: State,
                               flags: dict[str, dict[str, lifecycle.Flags]], base_sha: str,
                               warnings: list[Any]) -> None:
    # the base's bar, not the pull request's
    rule = lifecycle.deprecated_rule(lifecycle.policy_at(state.root, base_sha))
    for env, doc, model, version, where in _running(state):
        state_of = flags.get(model, {}).get(version)
        if state_of is None or not state_of.deprecated or state_of.archived:
            continue
        if _ran_at_base(state.root, base_sha, env, model, version):
            continue
        message = lifecycle.deprecated_message(VersionRef(model, version), state_of, env)
        if rule == lifecycle.BLOCK:
            checker.add(doc, where, f"{message} (policy lifecycle.deprecated: block)",
                        "lifecycle")
        else:
            before = len(checker.problems)
            checker.add(doc, where, message, "lifecycle-warning")
            warnings.append(checker.problems.pop(before))


def _ran_at_base(root: Path, base_sha: str, env: str, model: str, version: str) -> bool:
    raw = git.show_file(root, base_sha, f"environments/{env}.yaml")
    entry = environment_in(raw, env).models.get(model, NO_ENTRY) if raw is not None \
        else NO_ENTRY
    return version in entry.running()
