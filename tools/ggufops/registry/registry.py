"""The registry as plain data: where files live and how references are spelled."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops import semver, yamlio
from ggufops.errors import (
    BadReference,
    NotARegistry,
    UnknownEnvironment,
    UnknownVersion,
)
from ggufops.registry.records import Environment, VersionRecord, environment_from_data

REGISTRY_DIR = "registry"
ENVIRONMENTS_DIR = "environments"
SCHEMA_DIR = "registry/schema"
EVALS_DIR = "registry/evals"
POLICY_FILE = "registry/policy.yaml"
RESERVED_DIRS = frozenset({"schema", "evals"})
# registry/<model>/lifecycle.yaml: the model's status changes (ggufops.lifecycle), not a version
NOT_VERSION_FILES = frozenset({"lifecycle.yaml"})
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True, order=True)
class VersionRef:
    name: str
    version: str

    @classmethod
    def parse(cls, text: str) -> VersionRef:
        name, sep, version = text.partition("@")
        if not sep or not MODEL_NAME.match(name) or not semver.is_semver(version):
            raise BadReference(
                f"{text!r} is not a model version reference; write it as name@X.Y.Z, "
                "e.g. llama3-instruct@2.1.0"
            )
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def display_id(doc: dict[str, Any]) -> str:
    """`{model}-v{X.Y.Z}-{quantization}`, e.g. llama3-instruct-v2.1.0-q4_k_m."""
    return f"{doc['name']}-v{doc['version']}-{doc['quantization']}"


def version_relpath(name: str, version: str) -> str:
    return f"{REGISTRY_DIR}/{name}/{version}.yaml"


def environment_relpath(env: str) -> str:
    return f"{ENVIRONMENTS_DIR}/{env}.yaml"


def split_version_relpath(relpath: str) -> VersionRef | None:
    """`registry/<name>/<X.Y.Z>.yaml` -> VersionRef; None for other files."""
    parts = relpath.split("/")
    if len(parts) != 3 or parts[0] != REGISTRY_DIR or parts[1] in RESERVED_DIRS:
        return None
    if not parts[2].endswith(".yaml") or parts[2] in NOT_VERSION_FILES:
        return None
    return VersionRef(parts[1], parts[2][: -len(".yaml")])


def find_root(start: Path) -> Path:
    """The nearest directory at or above `start` that holds registry/policy.yaml."""
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / POLICY_FILE).is_file():
            return candidate
    raise NotARegistry(
        f"no ggufops registry at or above {start} (no {POLICY_FILE}); "
        "run inside a registry clone or pass --repo DIR"
    )


class Registry:
    """A registry checkout on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._policy: dict[str, Any] | None = None

    @classmethod
    def discover(cls, start: Path) -> Registry:
        return cls(find_root(start))

    def version_file(self, name: str, version: str) -> Path:
        return self.root / version_relpath(name, version)

    def environment_file(self, env: str) -> Path:
        return self.root / environment_relpath(env)

    def eval_file(self, eval_set: str) -> Path:
        return self.root / EVALS_DIR / f"{eval_set}.txt"

    def iter_version_files(self) -> Iterator[Path]:
        base = self.root / REGISTRY_DIR
        for model_dir in sorted(base.iterdir()) if base.is_dir() else ():
            if model_dir.name in RESERVED_DIRS or not model_dir.is_dir():
                continue
            yield from sorted(p for p in model_dir.glob("*.yaml")
                              if p.name not in NOT_VERSION_FILES)

    def iter_environment_files(self) -> Iterator[Path]:
        base = self.root / ENVIRONMENTS_DIR
        yield from sorted(base.glob("*.yaml")) if base.is_dir() else ()

    def environments(self) -> list[str]:
        return [p.stem for p in self.iter_environment_files()]

    def load_version(self, name: str, version: str) -> dict[str, Any]:
        path = self.version_file(name, version)
        if not path.is_file():
            raise UnknownVersion(
                f"{name}@{version} is not registered (no {path.relative_to(self.root)}); "
                f"see `ggufops list` or register it with `ggufops register`"
            )
        data: dict[str, Any] = yamlio.load(path)
        return data

    def load_ref(self, ref: VersionRef) -> dict[str, Any]:
        return self.load_version(ref.name, ref.version)

    def load_record(self, name: str, version: str) -> VersionRecord:
        """The version file as a record (for files validate has passed)."""
        return VersionRecord.from_doc(self.load_version(name, version))

    def environment_record(self, env: str) -> Environment:
        """The environment file, read leniently (validate reports what is wrong with it)."""
        return environment_from_data(env, yamlio.load(self._existing_environment(env)))

    def _existing_environment(self, env: str) -> Path:
        path = self.environment_file(env)
        if not path.is_file():
            known = ", ".join(self.environments()) or "none"
            raise UnknownEnvironment(f"no environment {env!r} ({path} missing); known: {known}")
        return path

    def deployed(self, env: str) -> dict[str, str]:
        """model name -> version running in `env`."""
        return self.environment_record(env).versions()

    def policy(self) -> dict[str, Any]:
        if self._policy is None:
            data = yamlio.load(self.root / POLICY_FILE)
            self._policy = data if isinstance(data, dict) else {}
        return self._policy
