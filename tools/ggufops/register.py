"""`ggufops register`: a GGUF file becomes an immutable model version.

Order matters, so that an interruption at any point leaves nothing that lies:
  1. every check that needs no writing: name, version, parent, header, flags, eval set,
     and (unless --no-push) that the S3 remote answers with these credentials;
  2. copy the file to registry/<model>/<X.Y.Z>.gguf, hashing sha256 (and md5) in one pass;
  3. `dvc add` (writes the .gguf.dvc pointer and the .gitignore entry) and `dvc push` in one
     DVC process; DVC's md5 is cross-checked against ours;
  4. HEAD the object in the remote: it must be there with that size;
  5. only then write the version YAML, atomically (temp file + rename).
A run interrupted before 5 leaves no YAML; running register again completes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ggufops import artifacts, chattemplate, schemas, semver, yamlio
from ggufops.atomic import atomic_write_text
from ggufops.errors import (
    BadReference,
    DvcError,
    GgufopsError,
    HeaderMismatch,
    ObjectMissing,
    UnknownParent,
    UsageError,
    VersionExists,
)
from ggufops.ggufheader import GgufHeader, read_header
from ggufops.registry import EVALS_DIR, MODEL_NAME, REGISTRY_DIR, Registry, display_id

DEFAULT_INFERENCE: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": 256,
}
COPY_CHUNK = 1024 * 1024


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
            "commands": self.commit_commands(),
            "version": self.doc,
        }


def register(registry: Registry, req: RegisterRequest) -> RegisterResult:
    """Check, track, push, then write the version file; see the module docstring."""
    _check_names(req)
    _check_free(registry, req)
    parent_doc = _parent(registry, req)
    header = read_header(req.source)
    _check_quantization(req, header)
    chat_template = _chat_template(req, header)
    eval_block = _eval_block(registry, req.eval_set)
    remote = _reachable_remote(registry.root) if req.push else None
    target = registry.root / REGISTRY_DIR / req.model / f"{req.version}.gguf"
    sha256, md5, size = copy_hashing(req.source, target)
    doc = _document(req, header=header, parent_doc=parent_doc, eval_block=eval_block,
                    artifact={"sha256": sha256, "size": size, "dvc_md5": md5})
    doc["inference"]["prompt_template"] = chat_template
    _check_schema(registry.root, doc)
    out = _track(registry.root, target, md5, remote)
    if remote is not None:
        _check_pushed(remote, out, size, _ref(req))
    version_file = registry.version_file(req.model, req.version)
    atomic_write_text(version_file, yamlio.dump(doc))
    return RegisterResult(doc, version_file, out.pointer, req.push,
                          _git_paths(registry.root, version_file, out.pointer))


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
    return {"set": eval_set, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def copy_hashing(source: Path, target: Path) -> tuple[str, str, int]:
    """Copy `source` to `target` (atomically) hashing sha256 and md5 in the same pass."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    same = target.exists() and source.samefile(target)
    fd, tmp_name = (-1, "") if same else tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with source.open("rb") as src, _maybe_open(fd) as dst:
            while chunk := src.read(COPY_CHUNK):
                sha.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                if dst is not None:
                    dst.write(chunk)
            if dst is not None:
                dst.flush()
                os.fsync(dst.fileno())
        if not same:
            Path(tmp_name).replace(target)
    except BaseException:
        if not same:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp_name).unlink()
        raise
    return sha.hexdigest(), md5.hexdigest(), size


@contextlib.contextmanager
def _maybe_open(fd: int) -> Any:
    if fd < 0:
        yield None
        return
    with os.fdopen(fd, "wb") as f:
        yield f


def _track(root: Path, target: Path, md5: str,
           remote: artifacts.S3Remote | None) -> artifacts.DvcOut:
    out = artifacts.dvc_add(root, target, push_to=remote.settings if remote else None)
    if out.md5 != md5:
        raise DvcError(
            f"{out.pointer}: dvc add recorded md5 {out.md5} but the copied file has md5 {md5}; "
            "the file changed while registering: run register again"
        )
    return out


def _reachable_remote(root: Path) -> artifacts.S3Remote:
    """The remote, checked before anything is written: clear errors for a dead endpoint or
    bad credentials (DVC would only say that an upload failed)."""
    remote = artifacts.S3Remote.from_repo(root)
    remote.check_bucket()
    return remote


def _check_pushed(remote: artifacts.S3Remote, out: artifacts.DvcOut, size: int,
                  ref: str) -> None:
    key = remote.key_for_md5(out.md5)
    info = remote.stat(key, label=ref)
    if info is None or info.size != size:
        found = "missing" if info is None else f"{info.size} bytes, not {size}"
        raise ObjectMissing(
            f"{ref}: after dvc push, {remote.settings.url_of(key)} is {found}; nothing was "
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


def _check_schema(root: Path, doc: dict[str, Any]) -> None:
    validator = schemas.load_validators(root)["model-version"]
    issues = schemas.check(validator, doc)
    if issues:
        raise GgufopsError(
            f"{doc['name']}@{doc['version']}: the version file would be invalid: "
            f"{issues[0].message}; fix the flag that sets it"
        )


def _git_paths(root: Path, version_file: Path, pointer: Path) -> list[str]:
    paths = [version_file, pointer, pointer.parent / ".gitignore"]
    return [p.relative_to(root).as_posix() for p in paths if p.exists()]
