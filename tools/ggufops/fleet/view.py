"""`ggufops fleet status`: every host of an environment against its environment file.

The desired state is read from git at the branch head (the environment file, and each
version's sha256 from its version file); what each host serves from its status object in
S3 (fleetstatus.py). A host drifts when what it serves differs from what it should serve;
it is stale when its object is older than --stale-after seconds, measured on S3's own clock
(the object's LastModified against the Date of the listing), so the hosts' and the
reader's clocks do not matter. Exit codes: 0 converged, 4 drift, 5 stale (no drift).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ggufops import git, yamlio
from ggufops.artifacts.s3config import S3Settings
from ggufops.artifacts.s3object import S3Objects
from ggufops.errors import FleetNotConverged, FleetStale, S3ObjectError
from ggufops.fleet.status import HostReport, env_prefix
from ggufops.registry.records import EnvEntry, environment_in, matches
from ggufops.registry.registry import environment_relpath, version_relpath

DEFAULT_STALE_AFTER = 60.0


@dataclass(frozen=True)
class Want:
    """What one model should be on a host: version, sha256, and the canary (or None)."""

    version: str
    sha256: str
    canary: tuple[str, str, int] | None = None  # version, sha256, weight

    def text(self) -> str:
        canary = f" + {self.canary[0]} ({self.canary[2]}%)" if self.canary else ""
        return f"{self.version}{canary}"


@dataclass(frozen=True)
class Desired:
    """The environment at a commit: `models` for any host, and per model the segments
    (partial rollbacks) that give the hosts matching a selector another version."""

    environment: str
    ref: str
    commit: str
    models: dict[str, Want]
    segmented: dict[str, list[tuple[dict[str, str], Want]]] = field(default_factory=dict)

    def for_host(self, labels: dict[str, str]) -> dict[str, Want]:
        wants = dict(self.models)
        for name, segments in self.segmented.items():
            for selector, want in segments:
                if matches(selector, labels):
                    wants[name] = want
                    break
        return wants


@dataclass(frozen=True)
class SeenReport:
    report: HostReport
    age: float  # seconds, on S3's clock


@dataclass
class HostView:
    host: str
    labels: dict[str, str]
    phase: str
    applied_commit: str | None
    serving: str
    age: float
    state: str  # in-sync, drift, stale, stopped
    reason: str | None
    differences: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FleetView:
    desired: Desired
    hosts: list[HostView]
    stale_after: float

    @property
    def drift(self) -> bool:
        return any(h.differences for h in self.hosts)

    @property
    def stale(self) -> bool:
        return not self.hosts or any(h.state in ("stale", "stopped") for h in self.hosts)

    @property
    def exit_code(self) -> int:
        if self.drift:
            return FleetNotConverged.exit_code
        return FleetStale.exit_code if self.stale else 0

    def as_dict(self) -> dict[str, Any]:
        d = self.desired
        return {"environment": d.environment, "ref": d.ref, "commit": d.commit,
                "desired": {n: asdict(w) for n, w in d.models.items()},
                "stale_after": self.stale_after, "drift": self.drift, "stale": self.stale,
                "exit_code": self.exit_code, "hosts": [h.as_dict() for h in self.hosts]}

    def raise_if_not_converged(self) -> None:
        if self.drift:
            raise FleetNotConverged("")
        if self.stale:
            raise FleetStale("")


# --- the desired state, from git ------------------------------------------------------------


def desired_at(root: Path, env: str, ref: str) -> Desired:
    commit = git.rev_parse(root, ref)
    path = environment_relpath(env)
    raw = git.show_file(root, commit, path)
    if raw is None:
        raise S3ObjectError(f"{path} does not exist at {ref} ({commit[:12]}); check --env")
    entries = environment_in(raw, path).models
    wants = {name: _want(root, commit, name, entry) for name, entry in entries.items()}
    segmented = {name: [(dict(seg.selector), _want(root, commit, name,
                                                   replace(entry, version=seg.version)))
                        for seg in entry.segments]
                 for name, entry in entries.items() if entry.segments}
    return Desired(env, ref, commit, wants, segmented)


def _want(root: Path, commit: str, name: str, entry: EnvEntry) -> Want:
    canary = entry.canary
    canary_want = None
    if canary is not None:
        canary_want = (canary.version, _sha256(root, commit, name, canary.version),
                       canary.weight)
    return Want(entry.version, _sha256(root, commit, name, entry.version), canary_want)


def _sha256(root: Path, commit: str, name: str, version: str) -> str:
    path = version_relpath(name, version)
    raw = git.show_file(root, commit, path)
    if raw is None:
        return ""
    doc = yamlio.parse(raw, Path(path)).data
    artifact = doc.get("artifact") if isinstance(doc, dict) else None
    return str(artifact.get("sha256")) if isinstance(artifact, dict) else ""


# --- what the hosts report, from S3 ---------------------------------------------------------


def read_reports(settings: S3Settings, env: str) -> list[SeenReport]:
    objects = S3Objects(settings)
    listing = objects.list(env_prefix(settings, env))
    seen = []
    for item in sorted(listing.objects, key=lambda o: o.key):
        if not item.key.endswith(".json"):
            continue
        raw = objects.get(item.key)
        report = _parse(raw, settings.url_of(item.key)) if raw is not None else None
        if report is not None:
            seen.append(SeenReport(report, max(0.0, listing.server_time - item.modified)))
    return seen


def _parse(raw: bytes, where: str) -> HostReport | None:
    try:
        return HostReport.from_dict(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as e:
        raise S3ObjectError(f"{where} is not a fleet status object ({e}); delete it or let "
                            "its agent write it again") from None


# --- comparing ------------------------------------------------------------------------------


def view(desired: Desired, reports: list[SeenReport], stale_after: float) -> FleetView:
    hosts = [host_view(desired.for_host(seen.report.labels), seen, stale_after)
             for seen in reports]
    return FleetView(desired, hosts, stale_after)


def host_view(wants: dict[str, Want], seen: SeenReport, stale_after: float) -> HostView:
    r = seen.report
    differences = differences_of(wants, r.serving)
    state = "drift" if differences else "in-sync"
    if r.phase == "stopped":
        state = "stopped"
    elif seen.age > stale_after:
        state = "stale"
    return HostView(r.host, r.labels, r.phase, r.applied_commit, serving_text(r.serving),
                    round(seen.age, 1), state, r.reason or r.remote_error or r.server_error,
                    differences)


def differences_of(wants: dict[str, Want], serving: dict[str, dict[str, Any]]) -> list[str]:
    """One line per model whose served version, sha256 or canary is not the wanted one."""
    lines = []
    for name, want in sorted(wants.items()):
        have = serving.get(name)
        if have is None:
            lines.append(f"{name}: wants {want.text()}, serves nothing")
        elif (have.get("version"), have.get("sha256")) != (want.version, want.sha256) \
                or _canary_of(have) != want.canary:
            other = " with other bytes (sha256 " + str(have.get("sha256"))[:12] + "…)" \
                if have.get("version") == want.version and have.get("sha256") != want.sha256 \
                else ""
            lines.append(f"{name}: wants {want.text()}, serves {_have_text(have)}{other}")
    return lines


def _canary_of(have: dict[str, Any]) -> tuple[str, str, int] | None:
    c = have.get("canary")
    if not isinstance(c, dict):
        return None
    return (str(c.get("version")), str(c.get("sha256")), int(c.get("weight") or 0))


def _have_text(have: dict[str, Any]) -> str:
    c = _canary_of(have)
    return f"{have.get('version')}" + (f" + {c[0]} ({c[2]}%)" if c else "")


def serving_text(serving: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{n}@{_have_text(h)}" for n, h in sorted(serving.items())) or "-"


# --- showing --------------------------------------------------------------------------------


def format_view(fleet: FleetView) -> str:
    d = fleet.desired
    wants = ", ".join(f"{n}@{w.text()}" for n, w in sorted(d.models.items())) or "no models"
    lines = [f"{d.environment} at {d.ref} ({d.commit[:12]}): {wants}"]
    rows = [("HOST", "LABELS", "STATE", "PHASE", "APPLIED", "SERVING", "SEEN", "REASON")]
    for h in fleet.hosts:
        labels = ",".join(f"{k}={v}" for k, v in sorted(h.labels.items())) or "-"
        rows.append((h.host, labels, h.state, h.phase, (h.applied_commit or "-")[:12],
                     h.serving, f"{h.age:.0f}s ago", h.reason or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
              for r in rows]
    lines.append(summary(fleet))
    return "\n".join(lines)


def summary(fleet: FleetView) -> str:
    if not fleet.hosts:
        return "no host has reported for this environment (stale: exit 5)"
    drifting = [h.host for h in fleet.hosts if h.differences]
    stale = [h.host for h in fleet.hosts if h.state in ("stale", "stopped")]
    parts = [f"{len(fleet.hosts)} host(s)"]
    if drifting:
        parts.append(f"drift on {', '.join(drifting)} (exit 4)")
    if stale:
        parts.append(f"not reporting within {fleet.stale_after:.0f} s: {', '.join(stale)}"
                     + ("" if drifting else " (exit 5)"))
    if not drifting and not stale:
        parts.append("all serve what the environment file says")
    return "; ".join(parts)


# --- GitHub commit status -------------------------------------------------------------------


def commit_state(fleet: FleetView) -> str:
    """success: converged; pending: hosts still applying; failure: drift on a degraded host,
    a stale host or no host at all."""
    if not fleet.drift and not fleet.stale:
        return "success"
    settled = [h for h in fleet.hosts if h.differences or h.state in ("stale", "stopped")]
    if fleet.hosts and all(h.phase not in ("degraded", "stopped") and h.state != "stale"
                           for h in settled):
        return "pending"
    return "failure"


def status_context(env: str) -> str:
    return f"ggufops/{env}"
