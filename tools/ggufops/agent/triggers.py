"""Automated rollback triggers: the policy of an environment and its verdict on a window.

`registry/policy.yaml` may hold, per environment:

    rollback_triggers:
      production:
        window_s: 300        # seconds of requests judged
        min_requests: 50     # the new version must have served this many on the host first
        error_rate: 0.05     # roll back above 5% failed requests
        p95_ratio: 1.5       # roll back when p95 > 1.5x the previous version's p95 here
        min_rating: 3.5      # roll back when the mean rating is below 3.5 ...
        min_ratings: 20      # ... once this many ratings came in
        tokens_ratio: 1.5    # alert only: completion tokens per request > 1.5x the previous

The agent judges the records of its own server's request window (GET /admin/requests):
the version it applied, since it was applied and at most `window_s` back, against the
previous version's last `window_s` of records on the same host. Pure functions: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ggufops.agent.watching import check_numbers, rows
from ggufops.errors import InvalidDesiredState
from ggufops.percentile import nearest_rank

ROLLBACK = "rollback"
ALERT = "alert"


@dataclass(frozen=True)
class TriggerPolicy:
    window_s: float = 300.0
    min_requests: int = 50
    error_rate: float | None = None
    p95_ratio: float | None = None
    min_rating: float | None = None
    min_ratings: int = 20
    tokens_ratio: float | None = None

    @classmethod
    def of_environment(cls, policy: Any, env: str) -> TriggerPolicy | None:
        """The environment's triggers from a parsed policy.yaml; None when it has none."""
        table = policy.get("rollback_triggers") if isinstance(policy, dict) else None
        entry = table.get(env) if isinstance(table, dict) else None
        if entry is None:
            return None
        if not isinstance(entry, dict) or not set(entry) <= set(cls.__dataclass_fields__):
            raise InvalidDesiredState(
                f"registry/policy.yaml: rollback_triggers.{env} must be a mapping of "
                f"{', '.join(cls.__dataclass_fields__)}; got {entry!r}")
        entry = check_numbers(f"rollback_triggers.{env}", entry,
                              counts=("min_requests", "min_ratings"), positive=("window_s",))
        return cls(**{k: v for k, v in entry.items() if v is not None or k in _OPTIONAL})


_OPTIONAL = ("error_rate", "p95_ratio", "min_rating", "tokens_ratio")


@dataclass(frozen=True)
class Firing:
    """A rule that fired: a rollback, or an alert only."""

    metric: str
    value: float
    threshold: float
    window_s: float
    action: str
    model: str
    version: str
    requests: int

    def trailer(self, host: str) -> str:
        """The value of the commit trailer `Rollback-Trigger:`."""
        return (f"metric={self.metric} value={self.value:.4g} threshold={self.threshold:g} "
                f"window={self.window_s:g}s host={host}")

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "threshold": self.threshold,
                "window_s": self.window_s, "action": self.action, "model": self.model,
                "version": self.version, "requests": self.requests}


@dataclass(frozen=True)
class Judged:
    """What a window says of one version (and, for the ratio rules, of the one before)."""

    model: str
    version: str
    requests: list[dict[str, Any]]
    ratings: list[dict[str, Any]]
    previous: list[dict[str, Any]]


def select(window: dict[str, Any], model: str, version: str, *, previous: str | None,
           since: float, now: float, window_s: float) -> Judged:
    """The records of `version` since max(`since`, now - window_s) and the previous
    version's last `window_s` of records (primary role only: a canary is judged apart)."""
    start = max(since, now - window_s)
    requests = [r for r in rows(window, "requests") if r.get("version") == version
                and r.get("role") == "primary" and float(r.get("ts", 0)) >= start]
    ratings = [r for r in rows(window, "ratings") if r.get("version") == version
               and float(r.get("ts", 0)) >= start]
    before = [r for r in rows(window, "requests") if previous is not None
              and r.get("version") == previous and r.get("role") == "primary"]
    if before:
        last = max(float(r["ts"]) for r in before)
        before = [r for r in before if float(r["ts"]) >= last - window_s]
    return Judged(model, version, requests, ratings, before)


def evaluate(policy: TriggerPolicy, judged: Judged) -> list[Firing]:
    """Every rule that fires on `judged`; none before the version served min_requests."""
    n = len(judged.requests)
    if n < policy.min_requests:
        return []
    found = [_error_rate(policy, judged), _p95(policy, judged), _rating(policy, judged),
             _tokens(policy, judged)]
    return [f for f in found if f is not None]


def first_rollback(firings: list[Firing]) -> Firing | None:
    return next((f for f in firings if f.action == ROLLBACK), None)


def _firing(policy: TriggerPolicy, judged: Judged, metric: str, value: float, *,
            threshold: float, action: str = ROLLBACK) -> Firing:
    return Firing(metric, value, threshold, policy.window_s, action, judged.model,
                  judged.version, len(judged.requests))


def _error_rate(policy: TriggerPolicy, judged: Judged) -> Firing | None:
    if policy.error_rate is None:
        return None
    failed = sum(1 for r in judged.requests if not r.get("ok"))
    rate = failed / len(judged.requests)
    return _firing(policy, judged, "error_rate", rate, threshold=policy.error_rate) \
        if rate > policy.error_rate else None


def _p95(policy: TriggerPolicy, judged: Judged) -> Firing | None:
    """Needs min_requests answered requests of both versions on this host."""
    if policy.p95_ratio is None:
        return None
    now = [float(r["latency_s"]) for r in judged.requests if r.get("ok")]
    before = [float(r["latency_s"]) for r in judged.previous if r.get("ok")]
    if min(len(now), len(before)) < policy.min_requests:
        return None
    base = nearest_rank(before, 95)
    if base <= 0:
        return None
    ratio = nearest_rank(now, 95) / base
    return _firing(policy, judged, "p95_ratio", ratio, threshold=policy.p95_ratio) \
        if ratio > policy.p95_ratio else None


def _rating(policy: TriggerPolicy, judged: Judged) -> Firing | None:
    if policy.min_rating is None or len(judged.ratings) < policy.min_ratings:
        return None
    mean = sum(int(r["rating"]) for r in judged.ratings) / len(judged.ratings)
    return _firing(policy, judged, "rating", mean, threshold=policy.min_rating) \
        if mean < policy.min_rating else None


def _tokens(policy: TriggerPolicy, judged: Judged) -> Firing | None:
    if policy.tokens_ratio is None:
        return None
    now = [int(r.get("completion_tokens", 0)) for r in judged.requests if r.get("ok")]
    before = [int(r.get("completion_tokens", 0)) for r in judged.previous if r.get("ok")]
    if not now or len(before) < policy.min_requests or sum(before) == 0:
        return None
    ratio = (sum(now) / len(now)) / (sum(before) / len(before))
    if ratio <= policy.tokens_ratio:
        return None
    return _firing(policy, judged, "tokens_ratio", ratio, threshold=policy.tokens_ratio,
                   action=ALERT)
