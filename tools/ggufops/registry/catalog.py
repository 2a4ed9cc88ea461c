"""What the registry holds, as rows for `list` and `show`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ggufops import semver, yamlio
from ggufops.registry import lifecycleview
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
    stage: str = ""  # lifecycle stage (ggufops.lifecycle): development ... archived
    lifecycle: list[dict[str, Any]] = field(default_factory=list)  # its recorded changes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _deployments(registry: Registry) -> dict[tuple[str, str], list[str]]:
    where: dict[tuple[str, str], list[str]] = {}
    for env in registry.environments():
        for model, entry in registry.environment_record(env).models.items():
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
        record = registry.load_record(ref.name, ref.version)
        rows.append(Row(
            name=ref.name, version=ref.version, display_id=record.display_id,
            quantization=record.quantization, parent_version=record.parent_version,
            created_at=record.created_at, sha256=record.artifact.sha256,
            environments=where.get((ref.name, ref.version), []),
        ))
    rows.sort(key=lambda r: (r.name, semver.parse(r.version)), reverse=True)
    rows.sort(key=lambda r: r.name)
    _set_status(rows)
    _set_stages(registry, rows)
    return rows


def _set_stages(registry: Registry, rows: list[Row]) -> None:
    found = lifecycleview.stages(registry, [VersionRef(r.name, r.version) for r in rows])
    for row in rows:
        stage = found[VersionRef(row.name, row.version)]
        row.stage, row.lifecycle = stage.stage, [e.as_dict() for e in stage.history]


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
    header = ("DISPLAY ID", "STATUS", "STAGE", "ENVIRONMENTS", "PARENT", "SHA256")
    body = [(r.display_id, r.status, r.stage or "-", ", ".join(r.environments) or "-",
             r.parent_version or "-", r.sha256[:12]) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=False)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in (header, *body))


def describe(registry: Registry, ref: VersionRef) -> dict[str, Any]:
    doc = registry.load_ref(ref)
    where = _deployments(registry).get((ref.name, ref.version), [])
    stage = lifecycleview.stages(registry, [ref])[ref]
    return {"display_id": display_id(doc), "environments": where, **stage.as_dict(),
            "version": doc}


def format_description(info: dict[str, Any]) -> str:

    where = ", ".join(info["environments"]) or "no environment"
    lines = [f"{info['display_id']} (runs in: {where})"]
    if "stage" in info:
        lines.append(f"stage: {info['stage']}")
        lines += [f"  {e['at']}  {e['status']:<10}  by {e['by']}"
                  + (f"  ({e['reason']})" if e.get("reason") else "") for e in info["lifecycle"]]
    return "\n".join(lines) + "\n" + yamlio.dump(info["version"]).rstrip()
