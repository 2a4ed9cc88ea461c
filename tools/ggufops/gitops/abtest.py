"""`ggufops ab`: how the versions of a model that serve side by side (primary, canary,
standby) compare, from the request windows of every host (GET /admin/requests).

Per version: requests, error rate, latency p50/p95, tokens per request, ratings. Each other
version is compared with the environment's primary: Mann-Whitney for latency (answered
requests), a two-proportion z-test for error rates (abstats.py), and a sample-size warning
when a test has too few requests to say anything. Then each shadow version's agreement,
latency, errors and drops (GET /admin/shadow, abshadow.py).
"""

from __future__ import annotations

import statistics
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ggufops.errors import AbError
from ggufops.gitops import abshadow, abstats
from ggufops.httpjson import request_json
from ggufops.percentile import interpolated

SIGNIFICANT = 0.05


@dataclass(frozen=True)
class HostWindow:
    """What one host's /admin/requests answered."""

    url: str
    requests: list[dict[str, Any]]
    ratings: list[dict[str, Any]]


@dataclass
class VersionSummary:
    version: str
    roles: list[str]
    hosts: int
    requests: int
    errors: int
    error_rate: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    tokens_per_request: float | None
    ratings: int
    mean_rating: float | None


@dataclass
class Comparison:
    version: str
    baseline: str
    latency_p_value: float | None
    error_rate_p_value: float | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class AbReport:
    env: str
    model: str
    primary: str | None
    since: float
    versions: list[VersionSummary]
    comparisons: list[Comparison]
    shadows: list[abshadow.ShadowSummary] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # hosts without shadow figures

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_token(path: Path) -> str:
    """The admin token in `path`; AbError naming the file when it is unusable."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise AbError(f"cannot read the token file {path}: {e.strerror}; pass the servers' "
                      "admin token file with --token-file") from None
    if not token:
        raise AbError(f"the token file {path} is empty; it must hold the servers' admin token")
    return token


def fetch_window(url: str, model: str, since: float, token: str, *,
                 timeout: float = 10.0) -> HostWindow:
    """One host's window; AbError naming the URL when it cannot be read."""
    query = urllib.parse.urlencode({"model": model, "since": f"{since:.3f}"})
    target = f"{url.rstrip('/')}/admin/requests?{query}"
    try:
        reply = request_json("GET", target, token=token, timeout=timeout)
    except OSError as e:
        raise AbError(f"{url}: cannot reach the server ({e}); check --host") from None
    data = reply.data if isinstance(reply.data, dict) else {}
    if reply.status != 200 or not isinstance(data.get("requests"), list):
        hint = "check --token-file" if reply.status in (401, 403) else "is it `ggufops serve`?"
        raise AbError(f"{target}: answered HTTP {reply.status}; {hint}")
    return HostWindow(url, data["requests"], list(data.get("ratings") or []))


def _by_version(windows: list[HostWindow], key: str) -> dict[str, list[tuple[str, Any]]]:
    grouped: dict[str, list[tuple[str, Any]]] = {}
    for window in windows:
        for row in getattr(window, key):
            grouped.setdefault(str(row["version"]), []).append((window.url, row))
    return grouped


def summarize(version: str, rows: list[tuple[str, Any]],
              ratings: list[tuple[str, Any]]) -> VersionSummary:
    records = [r for _, r in rows]
    ok = [r for r in records if r["ok"]]
    latencies = [float(r["latency_s"]) for r in ok]
    tokens = [r["prompt_tokens"] + r["completion_tokens"] for r in ok]
    scores = [int(r["rating"]) for _, r in ratings]
    errors = len(records) - len(ok)
    return VersionSummary(
        version=version, roles=sorted({str(r["role"]) for r in records}),
        hosts=len({url for url, _ in rows}), requests=len(records), errors=errors,
        error_rate=errors / len(records) if records else 0.0,
        latency_p50_s=interpolated(latencies, 50) if latencies else None,
        latency_p95_s=interpolated(latencies, 95) if latencies else None,
        tokens_per_request=statistics.fmean(tokens) if tokens else None,
        ratings=len(scores), mean_rating=statistics.fmean(scores) if scores else None)


def compare(candidate: str, baseline: str, rows: dict[str, list[tuple[str, Any]]],
            ) -> Comparison:
    """The candidate's latency and error rate against the baseline's, with warnings."""
    a = [r for _, r in rows.get(candidate, [])]
    b = [r for _, r in rows.get(baseline, [])]
    result = Comparison(candidate, baseline, None, None)
    lat_a = [float(r["latency_s"]) for r in a if r["ok"]]
    lat_b = [float(r["latency_s"]) for r in b if r["ok"]]
    if lat_a and lat_b:
        result.latency_p_value = abstats.mann_whitney(lat_a, lat_b).p_value
    if min(len(lat_a), len(lat_b)) < abstats.MIN_LATENCY_SAMPLES:
        result.warnings.append(
            f"latency: {len(lat_a)} vs {len(lat_b)} answered requests; at least "
            f"{abstats.MIN_LATENCY_SAMPLES} each are needed for a meaningful test")
    if a and b:
        _compare_errors(result, a, b)
    return result


def _compare_errors(result: Comparison, a: list[dict[str, Any]],
                    b: list[dict[str, Any]]) -> None:
    xa, xb = (sum(1 for r in rows if not r["ok"]) for rows in (a, b))
    result.error_rate_p_value = abstats.two_proportions(xa, len(a), xb, len(b)).p_value
    needed = abstats.needed_per_group(xa / len(a), xb / len(b))
    if needed is not None and min(len(a), len(b)) < needed:
        result.warnings.append(
            f"error rate: {xa}/{len(a)} vs {xb}/{len(b)}; telling such a difference apart "
            f"(alpha 0.05, power 0.8) needs about {needed} requests per version")
    elif not abstats.proportion_test_valid(xa, len(a), xb, len(b)):
        result.warnings.append(
            f"error rate: too few errors or successes ({xa}/{len(a)} vs {xb}/{len(b)}) for "
            "the z-test's normal approximation (fewer than 5 expected in a cell)")


def build_report(env: str, model: str, primary: str | None, since: float,
                 windows: list[HostWindow]) -> AbReport:
    rows, ratings = _by_version(windows, "requests"), _by_version(windows, "ratings")
    versions = [summarize(v, rows.get(v, []), ratings.get(v, []))
                for v in sorted(set(rows) | set(ratings))]
    baseline = primary if primary in rows else _busiest(rows)
    comparisons = [compare(v.version, baseline, rows) for v in versions
                   if baseline is not None and v.version != baseline and v.version in rows]
    return AbReport(env, model, primary, since, versions, comparisons)


def _busiest(rows: dict[str, list[tuple[str, Any]]]) -> str | None:
    return max(rows, key=lambda v: len(rows[v])) if rows else None


def collect(env: str, model: str, primary: str | None, *, hosts: list[str], token: str,
            window_s: float) -> AbReport:
    since = time.time() - window_s
    windows = [fetch_window(url, model, since, token) for url in hosts]
    report = build_report(env, model, primary, since, windows)
    report.shadows, report.warnings = abshadow.collect(model, hosts, token)
    return report


# --- text -----------------------------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(report: AbReport) -> str:
    lines = [f"A/B results: {report.model} in {report.env} (primary {report.primary or '?'})",
             f"{'version':<12}{'role':<18}{'hosts':>6}{'requests':>9}{'errors':>8}"
             f"{'p50 s':>8}{'p95 s':>8}{'tok/req':>8}{'ratings':>8}{'mean':>6}"]
    for v in report.versions:
        lines.append(f"{v.version:<12}{','.join(v.roles) or '-':<18}{v.hosts:>6}"
                     f"{v.requests:>9}{v.error_rate:>8.1%}{_num(v.latency_p50_s, '.3f'):>8}"
                     f"{_num(v.latency_p95_s, '.3f'):>8}{_num(v.tokens_per_request, '.1f'):>8}"
                     f"{v.ratings:>8}{_num(v.mean_rating, '.2f'):>6}")
    for c in report.comparisons:
        lines.append(f"{c.version} vs {c.baseline}: latency {_verdict(c.latency_p_value)} "
                     f"(Mann-Whitney), error rate {_verdict(c.error_rate_p_value)} "
                     "(two-proportion z-test)")
        lines += [f"  warning: {w}" for w in c.warnings]
    if not report.versions:
        lines.append("no requests in the window on these hosts")
    for shadow in report.shadows:
        lines += abshadow.render(shadow)
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def _verdict(p: float | None) -> str:
    if p is None:
        return "not tested"
    word = "differs" if p < SIGNIFICANT else "no significant difference"
    return f"{word}, p={p:.3g}"
