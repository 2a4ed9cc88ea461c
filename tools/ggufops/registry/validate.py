"""`ggufops validate`: schemas, references, immutability and promotion order.

Every problem in the repository is collected in one pass, each with file:line:column,
so a pull request author fixes them all at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ggufops import git, yamlio
from ggufops.errors import YamlError
from ggufops.hashing import file_sha256
from ggufops.registry import (
    canaryplan,
    compat,
    lifecyclecheck,
    overrides,
    releasegroups,
    schemas,
    warmset,
)
from ggufops.registry.dvcpointer import pointer_from_yaml, scan_pointer
from ggufops.registry.records import NO_ENTRY, EnvEntry, environment_from_data, environment_in
from ggufops.registry.registry import (
    ENVIRONMENTS_DIR,
    POLICY_FILE,
    REGISTRY_DIR,
    Registry,
    VersionRef,
    split_version_relpath,
)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    column: int
    message: str
    code: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class State:
    """The registry as read from disk: parsed documents by kind."""

    root: Path
    versions: dict[VersionRef, yamlio.Document] = field(default_factory=dict)
    environments: dict[str, yamlio.Document] = field(default_factory=dict)
    policy: yamlio.Document | None = None


class Checker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def add(self, doc_or_path: yamlio.Document | Path | str, where: Any, message: str,
            code: str) -> None:
        if isinstance(doc_or_path, yamlio.Document):
            mark = doc_or_path.mark(tuple(where or ()))
            name = self.rel(doc_or_path.path)
            self.problems.append(Problem(name, mark.line, mark.column, message, code))
        else:
            name = doc_or_path if isinstance(doc_or_path, str) else self.rel(doc_or_path)
            self.problems.append(Problem(name, 1, 1, message, code))

    def read(self, path: Path) -> yamlio.Document | None:
        try:
            return yamlio.read(path)
        except YamlError as e:
            text = str(e)
            prefix = f"{path}:"
            rest = text[len(prefix):] if text.startswith(prefix) else text
            line, col, msg = _split_position(rest)
            self.problems.append(Problem(self.rel(path), line, col, msg, "yaml"))
            return None

    def schema(self, doc: yamlio.Document, validator: Any) -> bool:
        issues = schemas.check(validator, doc.data)
        for issue in issues:
            self.add(doc, issue.path, issue.message, "schema")
        return not issues


def _split_position(text: str) -> tuple[int, int, str]:
    parts = text.split(":", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[0]), int(parts[1]), parts[2].strip()
    return 1, 1, text.strip()


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def validate_repo(root: Path, base: str | None = None,
                  find_missing: MissingObjects | None = None,
                  warnings: list[Problem] | None = None,
                  host_runtimes: compat.HostRuntimes | None = None) -> list[Problem]:
    """All problems in the registry at `root` (and against `base`, when given).

    With `find_missing` (the artifacts room's `dvc.missing_objects`), also every version an
    environment runs whose object is missing from the S3 remote, and every rollback target
    the retention policy keeps warm; the registry room does not import S3 code itself.
    `warnings` (when given) receives what passes but deserves a look (a deprecated
    version entering an environment under `lifecycle.deprecated: warn`).
    With `host_runtimes` (the fleet room's reader), also every version an environment runs
    that needs a newer llama-cpp-python than one of its hosts reports (compat.py).
    """
    checker = Checker(root)
    validators = schemas.load_validators(root)
    with _no_gc():  # parsing allocates only acyclic data; collecting it mid-way is waste
        state = _load(checker, Registry(root), validators)
    _check_references(checker, state)
    lifecyclecheck.check_repo(checker, state, git.rev_parse(root, base) if base else None,
                              warnings if warnings is not None else [])
    compat_warnings = Checker(root)
    compat.check_repo(checker, state, host_runtimes, compat_warnings)
    if warnings is not None:
        warnings.extend(compat_warnings.problems)
    if base is not None:
        _check_against_base(checker, state, base)
    if find_missing is not None:
        _check_artifacts(checker, state, find_missing)
    return sorted(checker.problems, key=lambda p: (p.file, p.line, p.column, p.message))


def _load(checker: Checker, registry: Registry, validators: dict[str, Any]) -> State:
    state = State(registry.root)
    policy_path = registry.root / POLICY_FILE
    doc = checker.read(policy_path)
    if doc is not None and checker.schema(doc, validators["policy"]):
        state.policy = doc
    for doc in _read_versions(checker, list(registry.iter_version_files()),
                              validators["model-version"]):
        ref = _version_path_matches(checker, doc, doc.path)
        if ref is not None:
            state.versions[ref] = doc
    for path in registry.iter_environment_files():
        doc = checker.read(path)
        if doc is not None and checker.schema(doc, validators["environment"]):
            name = doc.data.get("environment")
            if name is not None and name != path.stem:
                checker.add(doc, ["environment"], f"environment: {name!r} does not match the "
                            f"file name; set it to {path.stem!r}", "path")
            state.environments[path.stem] = doc
    return state


# Above this many version files, parsing is spread over the machine's cores.
PARALLEL_THRESHOLD = 2000
_WORKER: dict[str, Any] = {}


def _read_versions(checker: Checker, paths: list[Path], validator: Any) -> list[yamlio.Document]:
    """Parse and schema-check version files; the valid ones come back as documents."""
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < PARALLEL_THRESHOLD or workers < 2:
        return _read_chunk(checker, paths, validator)
    size = -(-len(paths) // workers)
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    # forkserver, not fork: the caller may have threads (the agent does)
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(
        len(chunks), mp_context=context, initializer=_init_worker, initargs=(checker.root,)
    ) as pool:
        results = list(pool.map(_read_chunk_in_worker, chunks))
    docs: list[yamlio.Document] = []
    for problems, parsed in results:
        checker.problems.extend(problems)
        docs.extend(yamlio.Document(path, data) for path, data in parsed)
    return docs


def _read_chunk(checker: Checker, paths: list[Path], validator: Any) -> list[yamlio.Document]:
    docs = []
    for path in paths:
        doc = checker.read(path)
        if doc is not None and checker.schema(doc, validator):
            docs.append(doc)
    return docs


def _init_worker(root: Path) -> None:
    gc.disable()  # a short-lived worker that allocates only acyclic data
    _WORKER.update(root=root, validator=schemas.load_validators(root)["model-version"])


def _read_chunk_in_worker(paths: list[Path]) -> tuple[list[Problem], list[tuple[Path, Any]]]:
    checker = Checker(_WORKER["root"])
    docs = _read_chunk(checker, paths, _WORKER["validator"])
    return checker.problems, [(d.path, d.data) for d in docs]


def _version_path_matches(checker: Checker, doc: yamlio.Document, path: Path) -> VersionRef | None:
    data = doc.data
    ref = VersionRef(data["name"], data["version"])
    expected = f"{REGISTRY_DIR}/{ref.name}/{ref.version}.yaml"
    ok = True
    if path.parent.name != ref.name:
        checker.add(doc, ["name"], f"name: {ref.name!r} disagrees with the directory "
                    f"{path.parent.name!r}; move the file to {expected} or fix the name", "path")
        ok = False
    if path.stem != ref.version:
        checker.add(doc, ["version"], f"version: {ref.version!r} disagrees with the file name "
                    f"{path.name!r}; rename the file to {expected} or fix the version", "path")
        ok = False
    want_file = f"{ref.version}.gguf"
    if data["artifact"]["file_name"] != want_file:
        checker.add(doc, ["artifact", "file_name"], f"artifact.file_name: expected "
                    f"{want_file!r} beside the version file, got {data['artifact']['file_name']!r}",
                    "path")
    return ref if ok else None


def _check_references(checker: Checker, state: State) -> None:
    for ref, doc in state.versions.items():
        parent = doc.data.get("parent_version")
        if parent is not None and VersionRef(ref.name, parent) not in state.versions:
            checker.add(doc, ["parent_version"], f"parent_version: {ref.name}@{parent} is not "
                        "registered; register it first or fix parent_version", "reference")
        if parent == ref.version:
            checker.add(doc, ["parent_version"], "parent_version: a version cannot be its own "
                        "parent", "reference")
        _check_eval(checker, state, doc)
        _check_pointer(checker, doc)
    for env, doc in state.environments.items():
        for model, entry in (doc.data.get("models") or {}).items():
            for key in ("version", "canary"):
                if key not in entry:
                    continue
                version = entry[key] if key == "version" else entry[key]["version"]
                where = ["models", model, key] if key == "version" else ["models", model, key,
                                                                         "version"]
                if VersionRef(model, version) not in state.versions:
                    checker.add(doc, where, f"{env} runs {model}@{version}, which is not "
                                f"registered (no {REGISTRY_DIR}/{model}/{version}.yaml); "
                                "register it or pick a registered version", "reference")
            for i, segment in enumerate(entry.get("segments") or []):  # partial rollbacks
                version = segment["version"]
                if VersionRef(model, version) not in state.versions:
                    checker.add(doc, ["models", model, "segments", i, "version"],
                                f"{env} runs {model}@{version} on {segment['selector']}, which "
                                f"is not registered (no {REGISTRY_DIR}/{model}/{version}.yaml)"
                                "; register it or pick a registered version", "reference")
    _check_overrides(checker, state)
    _check_canary_plans(checker, state)
    if state.policy is not None:
        for env in state.policy.data["promotion"]["order"]:
            if not (state.root / ENVIRONMENTS_DIR / f"{env}.yaml").is_file():
                checker.add(state.policy, ["promotion", "order"], f"promotion.order names "
                            f"{env!r} but {ENVIRONMENTS_DIR}/{env}.yaml does not exist; create "
                            "it or remove the name", "reference")


def _check_canary_plans(checker: Checker, state: State) -> None:
    """Canary analysis plans whose steps, weight or interval break the rules."""
    for env, doc in state.environments.items():
        for model, entry in environment_from_data(env, doc.data).models.items():
            canary = entry.canary
            if canary is None or canary.analysis is None:
                continue
            for key, message in canaryplan.plan_problems(canary.weight, canary.analysis):
                checker.add(doc, ["models", model, "canary", "analysis", key],
                            f"models.{model}.canary.analysis: {message}", "canary")


def _check_overrides(checker: Checker, state: State) -> None:
    """Overrides that do not fit their versions (max_tokens past the context, ...)."""
    versions = {(ref.name, ref.version): doc.data for ref, doc in state.versions.items()}
    for env, doc in state.environments.items():
        models = environment_from_data(env, doc.data).models
        for problem in overrides.problems(env, models, versions):
            checker.add(doc, list(problem.where), problem.message, "overrides")
        for model, entry in models.items():
            shadow = entry.shadow
            if shadow is not None and (model, shadow.version) not in versions:
                checker.add(doc, ["models", model, "shadow", "version"], f"{env} shadows "
                            f"{model}@{shadow.version}, which is not registered; register "
                            "it or pick a registered version", "reference")
        for problem in releasegroups.problems(env, doc.data):
            checker.add(doc, [int(k) if k.isdigit() else k for k in problem.where],
                        problem.message, "groups")


def _check_eval(checker: Checker, state: State, doc: yamlio.Document) -> None:
    eval_set = doc.data["eval"]["set"]
    path = state.root / REGISTRY_DIR / "evals" / f"{eval_set}.txt"
    if not path.is_file():
        checker.add(doc, ["eval", "set"], f"eval.set: registry/evals/{eval_set}.txt does not "
                    "exist; add the eval file or fix the name", "reference")
        return
    digest = _sha256_cached(path)
    if digest != doc.data["eval"]["sha256"]:
        checker.add(doc, ["eval", "sha256"], f"eval.sha256: registry/evals/{eval_set}.txt has "
                    f"sha256 {digest[:12]}…, not {doc.data['eval']['sha256'][:12]}…; eval sets "
                    "are immutable: add a new eval file instead of editing one", "reference")


# (registry root, the versions wanted) -> (version, S3 key) for each object the remote lacks
MissingObjects = Callable[[Path, dict[VersionRef, dict[str, Any]]],
                          Iterable[tuple[VersionRef, str]]]

_SHA_CACHE: dict[tuple[Path, int, int], str] = {}


def _sha256_cached(path: Path) -> str:
    st = path.stat()
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def _pointer_facts(checker: Checker, pointer: Path) -> tuple[Any, Any]:
    """(md5, size) of a DVC pointer, as written (None where absent)."""
    facts = scan_pointer(pointer.read_text(errors="replace"))
    if facts is None:
        pdoc = checker.read(pointer)  # unusual layout: read it as YAML (reports bad YAML)
        facts = pointer_from_yaml(pdoc.data if pdoc is not None else None)
    return facts.md5, facts.size


def _check_pointer(checker: Checker, doc: yamlio.Document) -> None:
    pointer = doc.path.with_name(doc.data["artifact"]["file_name"] + ".dvc")
    if not pointer.is_file():
        checker.add(doc, ["artifact"], f"artifact: DVC pointer {checker.rel(pointer)} is missing; "
                    "commit the .dvc file that `ggufops register` wrote", "reference")
        return
    md5, size = _pointer_facts(checker, pointer)
    artifact = doc.data["artifact"]
    if md5 != artifact["dvc_md5"] or size != artifact["size"]:
        checker.add(doc, ["artifact", "dvc_md5"], f"artifact: {checker.rel(pointer)} says md5 "
                    f"{md5} size {size}, the version file says "
                    f"{artifact['dvc_md5']} size {artifact['size']}; they must agree", "reference")


def _check_against_base(checker: Checker, state: State, base: str) -> None:
    root = state.root
    base_sha = git.rev_parse(root, base)
    changed = [(s, p) for s, p in git.changed_files(root, base_sha)
               if p.startswith((f"{REGISTRY_DIR}/", f"{compat.PROMPTS_DIR}/"))]
    immutable = [(s, p) for s, p in changed if s in ("M", "D", "T") and _is_immutable(p)]
    introduced = git.commits_adding(root, base_sha, [p for _, p in immutable])
    for status, path in immutable:
        what = "deleted" if status == "D" else "edited"
        commit = introduced.get(path, "?")
        checker.add(path, None, f"{what} a released file (added in commit {commit}); version "
                    "files are immutable: restore it and register a new version instead",
                    "immutable")
    _check_promotion(checker, state, base_sha)


def _is_immutable(path: str) -> bool:
    if path.endswith(".gguf.dvc"):
        return True
    if path.startswith(f"{REGISTRY_DIR}/evals/"):
        return True
    if compat.is_prompt_config(path):
        return True
    return split_version_relpath(path) is not None


def _check_promotion(checker: Checker, state: State, base_sha: str) -> None:
    if state.policy is None:
        return
    order = state.policy.data["promotion"]["order"]
    root = state.root
    for previous_env, env in itertools.pairwise(order):
        doc = state.environments.get(env)
        if doc is None:
            continue
        entered = _entering(environment_from_data(env, doc.data).models,
                            _entries_at(root, base_sha, env))
        if not entered:
            continue
        staged = _models_at(root, base_sha, previous_env)
        history = _versions_ever_in(root, base_sha, env)
        for model, version, where in entered:
            if staged.get(model) == version or (model, version) in history:
                continue
            role = " as a canary" if where[0] == "canary" else ""
            checker.add(doc, ["models", model, *where], f"{model}@{version} enters {env}{role} "
                        f"without having run in {previous_env} (promotion order "
                        f"{' -> '.join(order)}); deploy it to {previous_env} first", "promotion")


def _entering(models: dict[str, EnvEntry], before: dict[str, EnvEntry]
              ) -> list[tuple[str, str, list[str]]]:
    """(model, version, path in the entry) of every version new to the environment:
    primary versions that changed, and canary versions it ran in no role before."""
    found: list[tuple[str, str, list[str]]] = []
    for model, entry in models.items():
        old = before.get(model, NO_ENTRY)
        if old.version != entry.version:
            found.append((model, entry.version, ["version"]))
        canary = entry.canary_version
        if canary is not None and canary not in (old.version, old.canary_version):
            found.append((model, canary, ["canary", "version"]))
    return found


def _models_at(root: Path, ref: str, env: str) -> dict[str, str]:
    return {m: e.version for m, e in _entries_at(root, ref, env).items()}


def _entries_at(root: Path, ref: str, env: str) -> dict[str, EnvEntry]:
    path = f"{ENVIRONMENTS_DIR}/{env}.yaml"
    raw = git.show_file(root, ref, path)
    return environment_in(raw, f"{ref}:{path}").models if raw is not None else {}


def _versions_ever_in(root: Path, ref: str, env: str) -> set[tuple[str, str]]:
    """Every (model, version) the environment file named in any commit up to `ref`."""
    path = f"{ENVIRONMENTS_DIR}/{env}.yaml"
    seen: set[tuple[str, str]] = set()
    for _commit, text in git.file_history(root, ref, path):
        models = environment_in(text, path).models
        seen.update((m, e.version) for m, e in models.items())
    return seen


def _check_artifacts(checker: Checker, state: State, find_missing: MissingObjects) -> None:
    wanted: dict[VersionRef, dict[str, Any]] = {}
    for doc in state.environments.values():
        for model, entry in environment_from_data("", doc.data).models.items():
            for version in (entry.version, entry.canary_version):
                ref = VersionRef(model, version) if version else None
                if ref in state.versions:
                    wanted[ref] = state.versions[ref].data
    for ref, key in find_missing(state.root, wanted):
        checker.add(state.versions[ref], ["artifact"], f"artifact of {ref} is missing from the "
                    f"remote (object {key}); push it with `dvc push` or pick another version",
                    "artifact")
    warmset.check_rollback_targets(checker, state, find_missing)


# --- used by deploy and rollback (gitops) ---------------------------------------------------


def promotion_allowed(root: Path, env: str, model: str, version: str, ref: str, *,
                      canary: bool = False) -> str | None:
    """Why `model@version` may not enter `env` at commit `ref`; None when it may.

    The same rule `validate --base` applies to a pull request: a version enters an
    environment only while it runs in the one before it in the promotion order, or when
    it ran in this environment before (a rollback). With `canary`, the version enters as
    the model's canary: the same rule, except that the canary it already is may be ramped.
    """
    raw = git.show_file(root, ref, POLICY_FILE)
    try:
        policy = yamlio.parse(raw, Path(POLICY_FILE)).data if raw is not None else None
    except YamlError:
        policy = None
    promotion = policy.get("promotion") if isinstance(policy, dict) else None
    order = [str(e) for e in (promotion or {}).get("order") or []]
    if env not in order or order.index(env) == 0:
        return None
    previous = order[order.index(env) - 1]
    if _models_at(root, ref, previous).get(model) == version:
        return None
    if canary and _is_canary_at(root, ref, env, model, version):
        return None  # a ramp: the version is already this environment's canary
    if (model, version) in _versions_ever_in(root, ref, env):
        return None
    if canary:
        return (f"{model}@{version} cannot enter {env} as a canary: it does not run in "
                f"{previous} (promotion order {' -> '.join(order)}); deploy it to {previous} "
                "first")
    return (f"{model}@{version} does not run in {previous} (promotion order "
            f"{' -> '.join(order)}); deploy it to {previous} first")


def _is_canary_at(root: Path, ref: str, env: str, model: str, version: str) -> bool:
    entry = _entries_at(root, ref, env).get(model)
    return entry is not None and entry.canary_version == version
