"""What the registry holds, as rows for `list` and `show`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ggufops import semver, yamlio
from ggufops.registry.registry import (
    Registry,
    VersionRef,
    display_id,
)


@dataclass
class Row:
    name: str
    version: str
    display_id: str
    quantization: str
    parent_version: str | None
    created_at: str
    sha256: str
    environments: list[str] = field(default_factory=list)
    status: str = "registered"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _deployments(registry: Registry) -> dict[tuple[str, str], list[str]]:
    where: dict[tuple[str, str], list[str]] = {}
    for env in registry.environments():
        for model, entry in registry.environment(env).models.items():
            where.setdefault((model, entry.version), []).append(env)
            canary = entry.canary_version
            if canary:
                where.setdefault((model, canary), []).append(f"{env} (canary)")
    return where


def list_versions(registry: Registry) -> list[Row]:
    """Every version, newest first per model, with where it runs and its status.

    Status: `deployed` where an environment runs it, `superseded` when a newer version
    of the model is deployed somewhere and this one is not, else `registered`.
    """
    where = _deployments(registry)
    rows: list[Row] = []
    for path in registry.iter_version_files():
        ref = VersionRef(path.parent.name, path.stem)
        if not semver.is_semver(ref.version):
            continue
        doc = registry.load_ref(ref)
        rows.append(Row(
            name=ref.name, version=ref.version, display_id=display_id(doc),
            quantization=doc["quantization"], parent_version=doc.get("parent_version"),
            created_at=str(doc["created_at"]), sha256=doc["artifact"]["sha256"],
            environments=where.get((ref.name, ref.version), []),
        ))
    rows.sort(key=lambda r: (r.name, semver.parse(r.version)), reverse=True)
    rows.sort(key=lambda r: r.name)
    _set_status(rows)
    return rows


def _set_status(rows: list[Row]) -> None:
    newest_deployed: dict[str, semver.SemVer] = {}
    for row in rows:
        if row.environments:
            v = semver.parse(row.version)
            current = newest_deployed.get(row.name)
            if current is None or current < v:
                newest_deployed[row.name] = v
    for row in rows:
        newest = newest_deployed.get(row.name)
        if row.environments:
            row.status = "deployed"
        elif newest is not None and semver.parse(row.version) < newest:
            row.status = "superseded"


def format_table(rows: list[Row]) -> str:
    if not rows:
        return "no versions registered yet (see `ggufops register --help`)"
    header = ("DISPLAY ID", "STATUS", "ENVIRONMENTS", "PARENT", "SHA256")
    body = [(r.display_id, r.status, ", ".join(r.environments) or "-",
             r.parent_version or "-", r.sha256[:12]) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=False)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in (header, *body))


def describe(registry: Registry, ref: VersionRef) -> dict[str, Any]:
    doc = registry.load_ref(ref)
    where = _deployments(registry).get((ref.name, ref.version), [])
    return {"display_id": display_id(doc), "environments": where, "version": doc}


def format_description(info: dict[str, Any]) -> str:

    where = ", ".join(info["environments"]) or "no environment"
    return f"{info['display_id']} (runs in: {where})\n" + yamlio.dump(info["version"]).rstrip()
