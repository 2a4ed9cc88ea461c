"""`ggufops register`: a GGUF file becomes an immutable model version.

Order matters, so that an interruption at any point leaves nothing that lies:
  1. every check that needs no writing: name, version, parent, header, flags, eval set,
     and (unless --no-push) that the S3 remote answers with these credentials;
  2. hashing: one read of the file into a private copy under .dvc/tmp/ (staging.py),
     computing md5 (DVC's id and S3 key) and sha256 on the way;
  3. uploading: the copy goes straight to DVC's key in the remote (files/md5/xx/yyyy) with
     boto3's multipart transfer, unless an object of that size is already there, while
     the copy is fsynced; then a HEAD must find the object with that size;
  4. tracking: the copy is moved into DVC's cache and the workspace file, the .gguf.dvc
     pointer and the .gitignore entry are written exactly as `dvc add` would (dvctrack.py);
  5. only then the version YAML, atomically (temp file + rename).
A run interrupted before 5 leaves no YAML (at most a staged copy, which the next register
removes, and an object or cache entry that nothing names yet); running register again
completes it. A `progress.Reporter` is told when each phase starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ggufops import semver, yamlio
from ggufops.artifacts import dvc as artifacts
from ggufops.artifacts import dvctrack, staging
from ggufops.artifacts.ggufheader import GgufHeader, read_header
from ggufops.atomic import atomic_write_text, fsync_path
from ggufops.errors import (
    BadReference,
    GgufopsError,
    HeaderMismatch,
    ObjectMissing,
    UnknownParent,
    UsageError,
    VersionExists,
)
from ggufops.hashing import file_sha256
from ggufops.llama import chattemplate, loadcheck
from ggufops.progress import Quiet, Reporter
from ggufops.registry import compat, schemas
from ggufops.registry.registry import EVALS_DIR, MODEL_NAME, REGISTRY_DIR, Registry, display_id

DEFAULT_INFERENCE: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": 256,
}


@dataclass(frozen=True)
class RegisterRequest:
    source: Path
    model: str
    version: str
    parent: str | None = None
    base_model: str | None = None
    notes: str | None = None
    quantization: str | None = None
    eval_set: str | None = None
    inference: dict[str, Any] = field(default_factory=dict)
    push: bool = True
    chat_format: str | None = None  # None: the GGUF's own template, else no chat


@dataclass(frozen=True)
class RegisterResult:
    doc: dict[str, Any]
    version_file: Path
    pointer: Path
    pushed: bool
    git_paths: list[str]
    warnings: list[str] = field(default_factory=list)  # e.g. the file did not load

    @property
    def display_id(self) -> str:
        return display_id(self.doc)

    def commit_commands(self) -> list[str]:
        return [
            f"git add {' '.join(self.git_paths)}",
            f'git commit -m "register {self.display_id}"',
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "display_id": self.display_id,
            "version_file": str(self.version_file),
            "pointer": str(self.pointer),
            "pushed": self.pushed,
            "git_paths": self.git_paths,
            "warnings": self.warnings,
            "commands": self.commit_commands(),
            "version": self.doc,
        }


def register(registry: Registry, req: RegisterRequest, *, reporter: Reporter | None = None,
             remote: artifacts.S3Remote | None = None) -> RegisterResult:
    """Check, stage, upload, track, then write the version file; see the module docstring.

    `remote` (default: the repository's remote `models`) lets a long-lived caller reuse one
    S3 client for many registrations."""
    _check_names(req)
    _check_free(registry, req)
    parent_doc = _parent(registry, req)
    header = read_header(req.source)
    _check_quantization(req, header)
    chat_template = _chat_template(req, header)
    loaded = loadcheck.check_loads(req.source)
    eval_block = _eval_block(registry, req.eval_set)
    remote = _reachable_remote(registry.root, remote) if req.push else None
    target = registry.root / REGISTRY_DIR / req.model / f"{req.version}.gguf"
    report = reporter or Quiet()
    with _closing(report), staging.staged_file(registry.root) as staged:
        sha256, md5, size = _hash(req.source, staged, report)
        doc = _document(req, header=header, parent_doc=parent_doc, eval_block=eval_block,
                        artifact={"sha256": sha256, "size": size, "dvc_md5": md5})
        doc["inference"]["prompt_template"] = chat_template
        validator = schemas.load_validators(registry.root)["model-version"]
        if _schema_has_requires(validator):
            _add_requires(doc, header, loaded)
        _check_schema(validator, doc)
        digest = staging.Digest(sha256, md5, size)
        _push_synced(remote, staged, digest, _ref(req), report)
        report.phase("tracking")
        out = dvctrack.track(registry.root, staged, target, digest)
        report.phase("writing the version file")
        version_file = registry.version_file(req.model, req.version)
        atomic_write_text(version_file, yamlio.dump(doc))
    return RegisterResult(doc, version_file, out.pointer, req.push,
                          _git_paths(registry.root, version_file, out.pointer),
                          _load_warnings(loaded))


def _add_requires(doc: dict[str, Any], header: GgufHeader, loaded: loadcheck.LoadCheck) -> None:
    """`requires:` (before the eval block is fine: YAML order is only cosmetic): the minimum
    runtime, and the runtime that loaded the file when it did (docs/compatibility.md)."""
    validated = loaded.runtime if loaded.loaded else None
    block = compat.requires_block(header.architecture, header.quantization, validated)
    if block:
        doc["requires"] = block


def _schema_has_requires(validator: schemas.Validator) -> bool:
    """A registry made before `requires:` existed keeps its schema: write none there."""
    schema = validator.detailed.schema
    return "requires" in schema.get("properties", {})


def _load_warnings(loaded: loadcheck.LoadCheck) -> list[str]:
    if loaded.loaded:
        return []
    return [f"not validated with a runtime (no requires.validated_with): {loaded.reason}"]


@contextlib.contextmanager
def _closing(report: Reporter) -> Iterator[None]:
    try:
        yield
    finally:
        report.close()


def _hash(source: Path, staged: Path, report: Reporter) -> tuple[str, str, int]:
    """(sha256, md5, size) of `source`, read once into the private copy `staged`."""
    digest = staging.copy_hashing(source, staged,
                                  report.phase("hashing", source.stat().st_size))
    return digest.sha256, digest.md5, digest.size


def _ref(req: RegisterRequest) -> str:
    return f"{req.model}@{req.version}"


def _check_names(req: RegisterRequest) -> None:
    if not MODEL_NAME.match(req.model):
        raise BadReference(
            f"model name {req.model!r} is invalid; use lower-case letters, digits, '.', '_', "
            "'-' (at most 63, starting with a letter or digit)"
        )
    for flag, value in (("--version", req.version), ("--parent", req.parent)):
        if value is not None and not semver.is_semver(value):
            raise BadReference(f"{flag} {value!r} is not a semantic version X.Y.Z (e.g. 1.0.0)")
    if req.parent == req.version:
        raise UsageError(f"--parent {req.parent} is the version being registered; name its parent")


def _check_free(registry: Registry, req: RegisterRequest) -> None:
    path = registry.version_file(req.model, req.version)
    if path.exists():
        bumped = semver.parse(req.version)
        raise VersionExists(
            f"{_ref(req)} is already registered ({path.relative_to(registry.root)}); versions "
            f"are immutable: bump the version (e.g. --version "
            f"{bumped.major}.{bumped.minor}.{bumped.patch + 1})"
        )


def _parent(registry: Registry, req: RegisterRequest) -> dict[str, Any] | None:
    if req.parent is None:
        return None
    path = registry.version_file(req.model, req.parent)
    if not path.is_file():
        raise UnknownParent(
            f"--parent {req.parent}: {req.model}@{req.parent} is not registered "
            f"({path.relative_to(registry.root)} missing); register the parent first or fix "
            "--parent"
        )
    doc = registry.load_version(req.model, req.parent)
    return doc if isinstance(doc, dict) else None


def _check_quantization(req: RegisterRequest, header: GgufHeader) -> None:
    if req.quantization is not None and req.quantization.lower() != header.quantization:
        raise HeaderMismatch(
            f"{req.source}: --quantization {req.quantization} but the GGUF header says "
            f"{header.quantization} (general.file_type); pass the right file or drop the flag"
        )


def _chat_template(req: RegisterRequest, header: GgufHeader) -> str:
    """--chat-format, else the file's own template, else no chat; never inherited from the
    parent, since a template belongs to its file."""
    has_template = header.chat_template_sha256 is not None
    if req.chat_format is None:
        return chattemplate.default_for(has_template)
    return chattemplate.check(req.chat_format, where="--chat-format", has_template=has_template)


def _eval_block(registry: Registry, eval_set: str | None) -> dict[str, str]:
    evals_dir = registry.root / EVALS_DIR
    if eval_set is None:
        sets = sorted(p.stem for p in evals_dir.glob("*.txt"))
        if len(sets) != 1:
            found = ", ".join(sets) if sets else "none"
            raise UsageError(
                f"cannot choose an eval set: {EVALS_DIR} holds {found}; pass --eval-set NAME"
            )
        eval_set = sets[0]
    path = registry.eval_file(eval_set)
    if not path.is_file():
        raise UsageError(f"--eval-set {eval_set}: {path} does not exist; add it or fix the name")
    return {"set": eval_set, "sha256": file_sha256(path)}


def _push_synced(remote: artifacts.S3Remote | None, staged: Path, digest: staging.Digest,
                 ref: str, report: Reporter) -> None:
    """Upload the staged copy (if pushing) while it is fsynced: it must be on disk before it
    enters DVC's cache, and the flush costs nothing while the network is busy."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync") as pool:
        synced = pool.submit(fsync_path, staged)
        if remote is not None:
            _upload(remote, staged, digest, ref, report)
        synced.result()


def _upload(remote: artifacts.S3Remote, staged: Path, digest: staging.Digest, ref: str,
            report: Reporter) -> None:
    """Put the object at DVC's key unless it is there with this size (as `dvc push` skips
    what the remote has), then HEAD it."""
    key = remote.key_for_md5(digest.md5)
    info = remote.stat(key, label=ref)
    if info is None or info.size != digest.size:
        remote.upload(staged, key, label=ref, progress=report.phase("uploading", digest.size))
    _check_pushed(remote, key, digest.size, ref)


def _reachable_remote(root: Path, remote: artifacts.S3Remote | None) -> artifacts.S3Remote:
    """The remote, checked before anything is written: clear errors for a dead endpoint or
    bad credentials (before a byte is read)."""
    remote = remote or artifacts.S3Remote.from_repo(root)
    remote.check_bucket()
    return remote


def _check_pushed(remote: artifacts.S3Remote, key: str, size: int, ref: str) -> None:
    info = remote.stat(key, label=ref)
    if info is None or info.size != size:
        found = "missing" if info is None else f"{info.size} bytes, not {size}"
        raise ObjectMissing(
            f"{ref}: after the upload, {remote.settings.url_of(key)} is {found}; nothing was "
            "registered: run register again"
        )


def _document(
    req: RegisterRequest,
    *,
    header: GgufHeader,
    parent_doc: dict[str, Any] | None,
    eval_block: dict[str, str],
    artifact: dict[str, Any],
) -> dict[str, Any]:
    parent = parent_doc or {}
    inherited = {k: v for k, v in (parent.get("inference") or {}).items()
                 if k != "prompt_template"}
    inference = {**DEFAULT_INFERENCE, **inherited, **req.inference}
    doc: dict[str, Any] = {
        "name": req.model,
        "version": req.version,
        "base_model": req.base_model or parent.get("base_model") or req.model,
        "quantization": header.quantization,
        "parent_version": req.parent,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if req.notes:
        doc["notes"] = req.notes
    doc["artifact"] = {"file_name": f"{req.version}.gguf", **artifact}
    doc["gguf"] = header.as_version_fields()
    doc["inference"] = inference
    doc["eval"] = eval_block
    return doc


def _check_schema(validator: schemas.Validator, doc: dict[str, Any]) -> None:
    issues = schemas.check(validator, doc)
    if issues:
        raise GgufopsError(
            f"{doc['name']}@{doc['version']}: the version file would be invalid: "
            f"{issues[0].message}; fix the flag that sets it"
        )


def _git_paths(root: Path, version_file: Path, pointer: Path) -> list[str]:
    paths = [version_file, pointer, pointer.parent / ".gitignore"]
    return [p.relative_to(root).as_posix() for p in paths if p.exists()]
