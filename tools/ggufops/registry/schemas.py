"""JSON Schemas of the registry's files, and their errors in words a person can act on."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
from jsonschema.exceptions import ValidationError

from ggufops.errors import NotARegistry
from ggufops.registry.template import project_root

KINDS = ("model-version", "environment", "policy")

_PATTERN_NAMES = {
    "^(0|[1-9]": "a semantic version X.Y.Z (e.g. 2.1.0)",
    "^[0-9a-f]{64}$": "64 lower-case hex digits (a sha256)",
    "^[0-9a-f]{32}$": "32 lower-case hex digits (an md5)",
    "^[a-z0-9][a-z0-9._-]{0,62}$": "a model name: lower-case letters, digits, '.', '_', '-'",
    "^[A-Za-z0-9_][A-Za-z0-9._+-]*\\.gguf$": (
        "a plain file name ending in .gguf (no directories, no '..', not absolute)"
    ),
    "^(f32|f16": "a GGUF file type such as f16, q8_0, q4_0, q4_k_m",
}


@dataclass(frozen=True)
class SchemaIssue:
    path: tuple[str | int, ...]
    message: str


class Validator:
    """A compiled schema: a fast yes/no check, and the full error list only when needed."""

    def __init__(self, schema: dict[str, Any]) -> None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        self.detailed = cls(schema)
        self.fast = jsonschema_rs.validator_for(schema)

    def is_valid(self, data: Any) -> bool:
        return bool(self.fast.is_valid(data))


# schema text -> its compiled Validator: checking a schema against the meta-schema took
# 1.6 s of the sync agent's 1.8 s validation per commit on a busy 2-core host, for schemas
# that almost never change between commits
_COMPILED: dict[str, Validator] = {}


def load_validators(root: Path) -> dict[str, Validator]:
    validators = {}
    for kind in KINDS:
        path = root / "registry" / "schema" / f"{kind}.schema.json"
        try:
            text = path.read_text()
            schema = json.loads(text)
        except FileNotFoundError:
            raise NotARegistry(f"{path} is missing; restore it from the ggufops template") from None
        except json.JSONDecodeError as e:
            raise NotARegistry(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        validators[kind] = compiled(text, schema)
    return validators


def compiled(text: str, schema: dict[str, Any] | None = None) -> Validator:
    """The Validator of a schema's text (`schema`: that text already parsed), compiled once."""
    if text not in _COMPILED:
        if len(_COMPILED) >= 3 * (len(KINDS) + 2):  # bounded: schemas edited many times
            _COMPILED.clear()
        _COMPILED[text] = Validator(json.loads(text) if schema is None else schema)
    return _COMPILED[text]


def optional_validator(root: Path, relpath: str, what: str) -> Validator:
    """The registry's schema at `relpath` (one added after the first schemas, e.g. for
    lifecycle files or prompt configs); a registry made before it existed uses ggufops' own.
    `what` names the files that need it, for the error when neither has it."""
    path = root / relpath
    if not path.is_file():
        try:
            path = project_root() / relpath
        except NotARegistry:
            raise NotARegistry(f"{relpath} is missing but the registry has {what}; copy it "
                               "from the ggufops template") from None
    return compiled(path.read_text())


def check(validator: Validator, data: Any) -> list[SchemaIssue]:
    """Every schema problem in `data`, each with the path of the field it concerns."""
    if validator.is_valid(data):
        return []
    errors = list(validator.detailed.iter_errors(data))
    wrong_kind = [e for e in errors if e.validator == "type" and not e.absolute_path]
    issues = [_describe(e) for e in (wrong_kind or errors)]
    return sorted(issues, key=lambda i: [str(p) for p in i.path])


def _field(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: ValidationError) -> SchemaIssue:
    path = tuple(error.absolute_path)
    v, value = error.validator, error.instance
    custom = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
    if custom and v in ("enum", "type", "pattern", "const"):
        return SchemaIssue(path, f"{_field(path)}: {value!r} {custom}")
    if v == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        name = missing[0] if missing else error.message
        where = _field((*path, name))
        return SchemaIssue(path, f"{where}: required field is missing; add it")
    if v == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed))
        key = extra[0] if extra else "?"
        hint = f"allowed: {', '.join(allowed)}" if allowed else "no other fields are allowed"
        field = _field((*path, key))
        return SchemaIssue((*path, key), f"{field}: unknown field; remove it ({hint})")
    if v == "pattern":
        pattern = str(error.validator_value)
        expected = next((d for p, d in _PATTERN_NAMES.items() if pattern.startswith(p)), None)
        expected = expected or f"text matching {pattern}"
        return SchemaIssue(path, f"{_field(path)}: {value!r} is not {expected}")
    if v == "type":
        want = error.validator_value
        want_text = " or ".join(want) if isinstance(want, list) else str(want)
        got = type(value).__name__ if value is not None else "null"
        if not path:
            got = {"str": "plain string", "null": "empty document"}.get(got, got)
            msg = f"the file must hold a YAML mapping (key: value lines), not a {got}"
            return SchemaIssue(path, msg)
        return SchemaIssue(path, f"{_field(path)}: expected {want_text}, got {got} {value!r}")
    if v == "propertyNames":
        return SchemaIssue(path, f"{_field(path)}: {error.message}")
    return SchemaIssue(path, f"{_field(path)}: {error.message}")
