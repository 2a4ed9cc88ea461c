"""The body of `POST /admin/models`: one record the agent writes and the server reads.

The agent builds a `LoadRequest` from its plan and sends `to_json()`; the server reads it
back with `from_json()`, which answers 400 (`HttpError`) naming the bad field. This module
is light on purpose: it imports neither numpy nor llama_cpp, so the agent can use it
without loading what only `ggufops serve` needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ggufops import semver
from ggufops.errors import ChatTemplateError
from ggufops.hashing import SHA256_HEX
from ggufops.httpjson import HttpError
from ggufops.llama import chattemplate
from ggufops.registry.registry import MODEL_NAME

PRIMARY = "primary"
CANARY = "canary"
SHADOW = "shadow"  # serve/shadow.py: mirrored traffic, never answers a client
ROLES = (PRIMARY, CANARY, SHADOW)


@dataclass(frozen=True)
class LoadRequest:
    """What POST /admin/models asks for."""

    name: str
    version: str
    sha256: str
    display_id: str
    inference: dict[str, Any] = field(default_factory=dict)
    role: str = PRIMARY
    weight: int = field(default=0, compare=False)  # a canary's share; changes need no reload

    @property
    def key(self) -> str:
        """Where loads and load errors are tracked: the name, or `name/<role>`."""
        return self.name if self.role == PRIMARY else f"{self.name}/{self.role}"

    def to_json(self) -> dict[str, Any]:
        """The JSON body; a primary carries no role or weight (the server's defaults)."""
        body: dict[str, Any] = {"name": self.name, "version": self.version, "sha256": self.sha256,
                                "display_id": self.display_id, "inference": self.inference}
        if self.role != PRIMARY:
            body.update(role=self.role, weight=self.weight)
        return body

    @classmethod
    def from_json(cls, data: Any) -> LoadRequest:
        """The request a JSON body holds; HttpError 400 naming the first bad field."""
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object {name, version, sha256}")
        name, version, sha = _identity(data)
        display = data.get("display_id") or f"{name}-v{version}"
        inference = data.get("inference") or {}
        if not isinstance(display, str) or not isinstance(inference, dict):
            raise HttpError(400, "display_id must be a string and inference an object")
        _check_template(inference)
        role, weight = _role_and_weight(data)
        return cls(name, version, sha, display, inference, role, weight)


def _identity(data: dict[str, Any]) -> tuple[str, str, str]:
    name, version, sha = (data.get(k) for k in ("name", "version", "sha256"))
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise HttpError(400, f"name: {name!r} is not a model name (^[a-z0-9][a-z0-9._-]*$)")
    if not isinstance(version, str) or not semver.is_semver(version):
        raise HttpError(400, f"version: {version!r} is not a semantic version X.Y.Z")
    if not isinstance(sha, str) or not SHA256_HEX.match(sha):
        raise HttpError(400, f"sha256: {sha!r} is not 64 lower-case hex digits")
    return name, version, sha


def _check_template(inference: dict[str, Any]) -> None:
    if inference.get("prompt_template") is None:
        return
    try:
        chattemplate.check(inference["prompt_template"], where="inference.prompt_template")
    except ChatTemplateError as e:
        raise HttpError(400, str(e), param="inference") from None


def _role_and_weight(data: dict[str, Any]) -> tuple[str, int]:
    role = data.get("role") or PRIMARY
    if role not in ROLES:
        raise HttpError(400, f"role: {role!r} is not \"primary\", \"canary\" or \"shadow\"")
    weight = data.get("weight")
    if role == PRIMARY:
        return role, 0
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise HttpError(400, f"weight: a canary needs an integer weight 0-100, got {weight!r}")
    return role, weight
