"""`ggufops ab`'s shadow section: what every host's shadow mirror measured, per version.

Each host answers GET /admin/shadow?model=NAME&samples=1 (serve/shadow.py): its shadow, and
for the shadow version it ran last, the completed mirrored requests, errors, drops and
preemptions, exact matches, mean token overlap, and the latency samples of the shadow and
of the primary on the same requests. Counts are summed over hosts, the overlap is the mean
over all completed requests, and the percentiles are taken over the pooled samples (per-host
percentiles cannot be averaged). The figures cover everything since the version became the
shadow on each host, not `--window`.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from ggufops.errors import AbError
from ggufops.httpjson import request_json
from ggufops.percentile import interpolated


@dataclass(frozen=True)
class ShadowHost:
    """One host's shadow report: its current shadow (None) and its stats block (None)."""

    url: str
    percent: int | None
    stats: dict[str, Any] | None
    warning: str | None = None  # why this host has no shadow figures although it answered


@dataclass
class ShadowSummary:
    version: str
    percent: list[int]  # the share mirrored on the hosts that shadow it now
    hosts: int
    mirrored: int  # completed mirrored requests: the agreement figures rest on these
    dropped: int
    preempted: int
    errors: int
    exact_match_rate: float | None
    token_overlap_mean: float | None
    shadow_latency_p50_s: float | None
    shadow_latency_p95_s: float | None
    primary_latency_p50_s: float | None
    primary_latency_p95_s: float | None


def fetch(url: str, model: str, token: str, *, timeout: float = 10.0) -> ShadowHost:
    """One host's shadow report; AbError naming the URL when it cannot be read."""
    query = urllib.parse.urlencode({"model": model, "samples": "1"})
    target = f"{url.rstrip('/')}/admin/shadow?{query}"
    try:
        reply = request_json("GET", target, token=token, timeout=timeout)
    except OSError as e:
        raise AbError(f"{url}: cannot reach the server ({e}); check --host") from None
    if reply.status == 404:  # the host does not serve the model (now): nothing to show
        return ShadowHost(url, None, None)
    data = reply.data if isinstance(reply.data, dict) else {}
    if reply.status != 200 or "stats" not in data:  # e.g. a server older than shadows:
        # its A/B figures still count, only its shadow section is missing
        return ShadowHost(url, None, None, f"{target} answered HTTP {reply.status}: no shadow "
                          "figures from this host (a ggufops serve without GET /admin/shadow? "
                          "upgrade it)")
    shadow = data.get("shadow")
    percent = int(shadow["percent"]) if isinstance(shadow, dict) else None
    stats = data["stats"] if isinstance(data["stats"], dict) else None
    return ShadowHost(url, percent, stats)


def summarize(hosts: list[ShadowHost]) -> list[ShadowSummary]:
    """Per shadow version, pooled over the hosts that measured it."""
    by_version: dict[str, list[ShadowHost]] = {}
    for host in hosts:
        if host.stats is not None:
            by_version.setdefault(str(host.stats["version"]), []).append(host)
    return [_summary(version, group) for version, group in sorted(by_version.items())]


def _summary(version: str, group: list[ShadowHost]) -> ShadowSummary:
    stats = [h.stats for h in group if h.stats is not None]
    mirrored = _total(stats, "mirrored")
    overlap = sum(float(s["token_overlap_mean"] or 0) * int(s["mirrored"]) for s in stats)
    shadow = [float(v) for s in stats for v in s.get("shadow_latency_s") or []]
    primary = [float(v) for s in stats for v in s.get("primary_latency_s") or []]
    return ShadowSummary(
        version=version, percent=sorted({h.percent for h in group if h.percent is not None}),
        hosts=len(group), mirrored=mirrored, dropped=_total(stats, "dropped"),
        preempted=_total(stats, "preempted"), errors=_total(stats, "errors"),
        exact_match_rate=_total(stats, "exact_matches") / mirrored
        if mirrored and all("exact_matches" in s for s in stats) else None,
        token_overlap_mean=overlap / mirrored if mirrored else None,
        shadow_latency_p50_s=_pct(shadow, 50), shadow_latency_p95_s=_pct(shadow, 95),
        primary_latency_p50_s=_pct(primary, 50), primary_latency_p95_s=_pct(primary, 95))


def _total(stats: list[dict[str, Any]], key: str) -> int:
    return sum(int(s.get(key) or 0) for s in stats)


def _pct(values: list[float], q: float) -> float | None:
    return interpolated(values, q) if values else None


def collect(model: str, hosts: list[str], token: str) -> tuple[list[ShadowSummary], list[str]]:
    """The shadow sections and a warning per host that could not give one."""
    found = [fetch(url, model, token) for url in hosts]
    return summarize(found), [h.warning for h in found if h.warning is not None]


# --- text -----------------------------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(summary: ShadowSummary) -> list[str]:
    """Three lines per shadow version."""
    s = summary
    share = "/".join(f"{p}%" for p in s.percent) or "no longer shadowed"
    return [
        f"shadow {s.version} ({share}, {s.hosts} host{'s' if s.hosts != 1 else ''}): "
        f"{s.mirrored} mirrored requests completed, {s.dropped} dropped (queue full), "
        f"{s.preempted} preempted, {s.errors} errors",
        f"  agreement with the primary: exact match {_num(s.exact_match_rate, '.1%')}, "
        f"token overlap {_num(s.token_overlap_mean, '.3f')} (mean)",
        f"  latency p50/p95: shadow {_num(s.shadow_latency_p50_s, '.3f')}/"
        f"{_num(s.shadow_latency_p95_s, '.3f')} s, primary on the same requests "
        f"{_num(s.primary_latency_p50_s, '.3f')}/{_num(s.primary_latency_p95_s, '.3f')} s",
    ]
