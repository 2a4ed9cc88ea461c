"""Canary analysis: the verdict on one interval of a canary against the primary.

The agent compares, on its own host, the canary's requests with the primary's over the
same window (the step's commit time to now), read from its server's request window (GET
/admin/requests). Thresholds per environment in `registry/policy.yaml`:

    canary_analysis:
      production:
        min_requests: 50         # per role (canary and primary) before any verdict (>= 20)
        alpha: 0.05              # one-sided significance level of every test
        error_rate_margin: 0.01  # the canary may fail this much more often (absolute)
        max_p95_ratio: 1.5       # canary p95 / primary p95 above this (significantly)
        max_rating_drop: 0.5     # primary mean rating - canary mean rating above this
        min_ratings: 20          # ratings per role before the rating test runs
        progress_deadline: 3600  # optional: abort a step still at `wait` this long after due
                                 # on a host whose primary had its min_requests

The verdict is `wait` (fewer than `min_requests` requests on either side, never fewer than
20; or, when nothing failed, fewer than the 20 answered requests of each role the latency
test needs: no decision, never a pass), `fail` (the first metric that fails, with its
figures) or `pass`. Errors and ratings can fail a canary before 20 answers; only a pass
waits for latency to be judged, so a much slower canary failing many requests (as the
primary does) cannot pass unjudged:

- error rate: a one-sided two-proportion test of H0 `p_canary - p_primary <= margin`
  against H1 `> margin`, Agresti-Caffo adjusted (one success and one failure added to each
  side: its standard error is never 0, and it stays honest at 0 errors); fail when
  p < alpha.
- latency: a test of the tail itself, H0 `canary p95 <= max_p95_ratio x primary p95`.
  The limit is `max_p95_ratio` times the primary's p95 (nearest rank, the k-th of its n
  answers); a new primary answer lands above the k-th of n with probability
  (n + 1 - k) / (n + 1) whatever the distribution (about 5%; the exceedance of an order
  statistic is Beta(n + 1 - k, k)). Under H0 the canary's share of answers above the limit
  is at most that, so a one-sided two-proportion z-test of the canary's share (Agresti-Caffo
  adjusted: one slow and one fast answer added) against it, with the Beta's variance on the
  primary's side, fails the canary when p < alpha and its p95 ratio is above the limit.
  A slow tail is seen (8 of 50 answers 5x slower fails) while a speed-equal canary almost
  never is (tests/agent/test_canary_verdict.py simulates both). It replaces a Mann-Whitney
  test, which tests a shift of the whole distribution and so passed a slow tail.
- ratings: when both sides have `min_ratings`, a one-sided Welch z-test of H0
  `mean_primary - mean_canary <= max_rating_drop`; fail when p < alpha. Fewer ratings:
  not judged (many applications send none); requests alone then decide.

A `wait` is never a decision, so a canary that gets too little traffic would stay at its
weight for ever. With `progress_deadline` (seconds), a step still at `wait` that long after
it became due (or later: the agent's `waiting_since`) fails on the metric
`progress_deadline` on a host whose primary had its `min_requests` there: the host is in
rotation and the step still cannot be judged in time. The canary is aborted, and the
primary, the version known good, takes all the traffic again. A host whose primary is as
quiet (drained, out of rotation) keeps waiting: it has nothing to say about the canary.
Without the key (the default) every step waits.

Pure functions: no I/O.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

from ggufops import percentile
from ggufops.agent.watching import check_numbers, rows
from ggufops.errors import InvalidDesiredState
from ggufops.gitops import abstats

TAIL = 0.95  # the latency quantile judged: p95
WAIT = "wait"
GOOD = "pass"
FAIL = "fail"
DEADLINE = "progress_deadline"  # the metric of a step that waited past its deadline


@dataclass(frozen=True)
class CanaryPolicy:
    min_requests: int = 50
    alpha: float = 0.05
    error_rate_margin: float = 0.01
    max_p95_ratio: float = 1.5
    max_rating_drop: float = 0.5
    min_ratings: int = 20
    progress_deadline: float | None = None  # seconds a due step may wait; None: for ever

    @classmethod
    def of_environment(cls, policy: Any, env: str) -> CanaryPolicy:
        """The environment's thresholds from a parsed policy.yaml (defaults when absent)."""
        table = policy.get("canary_analysis") if isinstance(policy, dict) else None
        entry = table.get(env) if isinstance(table, dict) else None
        if entry is None:
            return cls()
        if not isinstance(entry, dict) or not set(entry) <= set(cls.__dataclass_fields__):
            raise InvalidDesiredState(
                f"registry/policy.yaml: canary_analysis.{env} must be a mapping of "
                f"{', '.join(cls.__dataclass_fields__)}; got {entry!r}")
        entry = check_numbers(f"canary_analysis.{env}", entry,
                              counts=("min_requests", "min_ratings"),
                              positive=("progress_deadline",))
        return cls(**{k: v for k, v in entry.items() if v is not None})


@dataclass(frozen=True)
class Sample:
    """One role's records over the window."""

    requests: int
    errors: int
    latencies: list[float]  # answered requests
    ratings: list[int]

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p95(self) -> float | None:
        return percentile.nearest_rank(self.latencies, TAIL * 100) if self.latencies else None

    def mean_rating(self) -> float | None:
        return statistics.fmean(self.ratings) if self.ratings else None


@dataclass(frozen=True)
class Verdict:
    outcome: str  # wait, pass or fail
    metric: str | None  # the metric that failed (fail only)
    canary_requests: int
    primary_requests: int
    canary_error_rate: float
    primary_error_rate: float
    error_rate_p: float | None  # one-sided, against the margin
    canary_p95_s: float | None
    primary_p95_s: float | None
    p95_ratio: float | None
    latency_p: float | None
    canary_rating: float | None
    primary_rating: float | None
    rating_p: float | None
    window_s: float
    note: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trailer(self, host: str) -> str:
        """The value of the commit trailer `Canary-Analysis:`."""
        failed = f" metric={self.metric}" if self.metric else ""
        return (f"verdict={self.outcome}{failed} requests={self.canary_requests}/"
                f"{self.primary_requests} error_rate={self.canary_error_rate:.4f}/"
                f"{self.primary_error_rate:.4f} p95_ratio={_g(self.p95_ratio)} "
                f"rating={_g(self.canary_rating)}/{_g(self.primary_rating)} "
                f"window={self.window_s:.0f}s host={host}")


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def sample(window: dict[str, Any], version: str, role: str, since: float) -> Sample:
    """`version`'s records in `role` since `since` (ratings of that version since then)."""
    mine = [r for r in rows(window, "requests") if r.get("version") == version
            and r.get("role") == role and float(r.get("ts", 0)) >= since]
    answered = [float(r["latency_s"]) for r in mine if r.get("ok")]
    ratings = [int(r["rating"]) for r in rows(window, "ratings")
               if r.get("version") == version and float(r.get("ts", 0)) >= since]
    return Sample(len(mine), len(mine) - len(answered), answered, ratings)


def judge(policy: CanaryPolicy, canary: Sample, primary: Sample, window_s: float,
          overdue_s: float = 0.0) -> Verdict:
    """The verdict on one interval, `overdue_s` seconds after the step became due; see the
    module's docstring."""
    p95_c, p95_p = canary.p95(), primary.p95()
    figures = Verdict(
        WAIT, None, canary.requests, primary.requests, canary.error_rate, primary.error_rate,
        _error_rate_p(policy, canary, primary), p95_c, p95_p,
        p95_c / p95_p if p95_c is not None and p95_p else None,
        _tail_p(policy, canary, primary, p95_p), canary.mean_rating(),
        primary.mean_rating(), _rating_p(policy, canary, primary), window_s, "")
    outcome, metric, note = _outcome(policy, figures)
    if outcome == GOOD and figures.latency_p is None:  # too few answers for the tail test
        outcome, note = WAIT, (
            f"too few answered requests to judge latency: {len(canary.latencies)} canary, "
            f"{len(primary.latencies)} primary; {abstats.MIN_LATENCY_SAMPLES} of each are "
            "needed")
    deadline = policy.progress_deadline
    if outcome == WAIT and deadline is not None and overdue_s >= deadline \
            and primary.requests >= _needed(policy):  # a host in rotation, not a drained one
        outcome, metric, note = FAIL, DEADLINE, (
            f"no verdict after waiting {overdue_s:.0f}s for it (progress_deadline "
            f"{deadline:g}s): {note}")
    return replace(figures, outcome=outcome, metric=metric, note=note)


def _outcome(policy: CanaryPolicy, v: Verdict) -> tuple[str, str | None, str]:
    """(outcome, the failed metric, why) of the figures in `v`."""
    needed = _needed(policy)
    if min(v.canary_requests, v.primary_requests) < needed:
        return WAIT, None, (f"too few requests: {v.canary_requests} canary, "
                            f"{v.primary_requests} primary; {needed} of each are needed")
    if v.error_rate_p is not None and v.error_rate_p < policy.alpha:
        return FAIL, "error_rate", (
            f"error rate {v.canary_error_rate:.2%} vs {v.primary_error_rate:.2%} (margin "
            f"{policy.error_rate_margin:g}, p={v.error_rate_p:.3g})")
    if v.p95_ratio is not None and v.p95_ratio > policy.max_p95_ratio \
            and v.latency_p is not None and v.latency_p < policy.alpha:
        return FAIL, "p95_ratio", (f"p95 {v.p95_ratio:.2f}x the primary's (limit "
                                   f"{policy.max_p95_ratio:g}, tail test "
                                   f"p={v.latency_p:.3g})")
    if v.rating_p is not None and v.rating_p < policy.alpha:
        return FAIL, "rating", (f"mean rating {v.canary_rating:.2f} vs {v.primary_rating:.2f}"
                                f" (drop limit {policy.max_rating_drop:g}, p={v.rating_p:.3g})")
    return GOOD, None, "no metric worse than its limit"


def _needed(policy: CanaryPolicy) -> int:
    """Requests of each role before any verdict."""
    return max(policy.min_requests, abstats.MIN_LATENCY_SAMPLES)


def _error_rate_p(policy: CanaryPolicy, canary: Sample, primary: Sample) -> float:
    """One-sided p of H1 `p_canary - p_primary > margin` (Agresti-Caffo adjusted Wald)."""
    pc = (canary.errors + 1) / (canary.requests + 2)
    pp = (primary.errors + 1) / (primary.requests + 2)
    se = math.sqrt(pc * (1 - pc) / (canary.requests + 2) + pp * (1 - pp) / (primary.requests + 2))
    return abstats.normal_sf((pc - pp - policy.error_rate_margin) / se)


def _tail_p(policy: CanaryPolicy, canary: Sample, primary: Sample,
            primary_p95: float | None) -> float | None:
    """One-sided p of H1 `canary p95 > max_p95_ratio x primary p95` (see the docstring);
    None with fewer than MIN_LATENCY_SAMPLES answered requests on either side."""
    c, n = len(canary.latencies), len(primary.latencies)
    if min(c, n) < abstats.MIN_LATENCY_SAMPLES or primary_p95 is None:
        return None
    limit = policy.max_p95_ratio * primary_p95
    slower = sum(1 for latency in canary.latencies if latency > limit)
    expected = _share_above_order_statistic(n, TAIL)
    share = (slower + 1) / (c + 2)
    se = math.sqrt(share * (1 - share) / (c + 2) + expected * (1 - expected) / (n + 2))
    return abstats.normal_sf((share - expected) / se)


def _share_above_order_statistic(n: int, q: float) -> float:
    """The expected share of new values above the nearest-rank q-quantile of n values."""
    return (n + 1 - percentile.rank(n, q * 100)) / (n + 1)


def _rating_p(policy: CanaryPolicy, canary: Sample, primary: Sample) -> float | None:
    """One-sided Welch z p of H1 `mean_primary - mean_canary > max_rating_drop`."""
    if min(len(canary.ratings), len(primary.ratings)) < max(policy.min_ratings, 2):
        return None
    drop = statistics.fmean(primary.ratings) - statistics.fmean(canary.ratings)
    spread = statistics.variance(canary.ratings) / len(canary.ratings) + \
        statistics.variance(primary.ratings) / len(primary.ratings)
    excess = drop - policy.max_rating_drop
    if spread == 0:
        return 0.0 if excess > 0 else 1.0  # every rating equal on both sides: no noise
    return abstats.normal_sf(excess / math.sqrt(spread))
