"""The canary analysis verdict on recorded windows: wait below the minimum, fail on a
significantly worse error rate, p95 or rating, pass otherwise; the values worked out by
hand from the formulas in agent/canaryverdict.py."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from ggufops.agent import canaryverdict
from ggufops.agent.canaryverdict import CanaryPolicy, Sample, judge
from ggufops.errors import InvalidDesiredState

POLICY = CanaryPolicy(min_requests=50, min_ratings=20)


def requests(n: int, *, errors: int = 0, latency: float = 0.1, spread: float = 0.01
             ) -> Sample:
    """n requests, `errors` of them failed; latencies latency + i * spread/n (distinct)."""
    answered = [latency + i * spread / n for i in range(n - errors)]
    return Sample(n, errors, answered, [])


def rated(sample: Sample, ratings: list[int]) -> Sample:
    return Sample(sample.requests, sample.errors, sample.latencies, ratings)


def test_too_few_requests_on_either_side_waits_and_never_passes() -> None:
    for canary, primary in ((requests(49), requests(500)), (requests(500), requests(49))):
        verdict = judge(POLICY, canary, primary, 60)
        assert verdict.outcome == canaryverdict.WAIT
        assert "too few requests" in verdict.note
    # even a canary failing everything waits for the minimum: no verdict on 10 requests
    assert judge(POLICY, requests(10, errors=10), requests(500), 60).outcome == "wait"


def test_a_step_waiting_past_its_progress_deadline_fails_and_only_then() -> None:
    """Without a deadline a step without traffic waits for ever; with one, a `wait` at or
    past it fails on progress_deadline, while a verdict the figures reach is kept."""
    idle = requests(3)
    assert judge(POLICY, idle, requests(500), 60, overdue_s=1e9).outcome == "wait"
    deadline = dataclasses.replace(POLICY, progress_deadline=600)
    assert judge(deadline, idle, requests(500), 60, overdue_s=599.5).outcome == "wait"
    late = judge(deadline, idle, requests(500), 660, overdue_s=600)
    assert (late.outcome, late.metric) == ("fail", canaryverdict.DEADLINE)
    assert late.note.startswith("no verdict after waiting 600s for it (progress_deadline "
                                "600s): too few requests: 3 canary, 500 primary")
    assert late.trailer("h").startswith("verdict=fail metric=progress_deadline requests=3/500")
    # a host whose primary is as quiet (drained, out of rotation) keeps waiting
    quiet = judge(deadline, idle, requests(49), 9e3, overdue_s=9e3)
    assert quiet.outcome == "wait" and quiet.note.startswith("too few requests: 3 canary")
    assert judge(deadline, idle, requests(50), 9e3, overdue_s=9e3).metric == "progress_deadline"
    # past the deadline, figures that decide still decide: a pass passes, a fail names its
    # own metric
    assert judge(deadline, requests(60), requests(500), 9e3, overdue_s=9e3).outcome == "pass"
    assert judge(deadline, requests(60, latency=0.3), requests(500), 9e3,
                 overdue_s=9e3).metric == "p95_ratio"


def test_the_minimum_is_never_below_what_the_latency_test_needs() -> None:
    """min_requests 5 would let a 2x slower canary pass on 5 requests, where Mann-Whitney
    cannot run: the verdict waits for 20 of each."""
    lax = CanaryPolicy(min_requests=5)
    slow = requests(19, latency=0.2)
    assert judge(lax, slow, requests(100), 60).outcome == "wait"
    assert judge(lax, requests(20, latency=0.2), requests(100), 60).metric == "p95_ratio"


def test_latency_is_judged_on_answered_requests_or_the_verdict_waits() -> None:
    """Many errors on both sides (equal rates) leave 10 answered canary requests: a 10x
    slower canary must not pass with its latency unjudged; with 20 answered it fails."""
    canary, primary = requests(100, errors=90, latency=1.0), requests(1000, errors=900)
    verdict = judge(POLICY, canary, primary, 60)
    assert verdict.error_rate_p is not None and verdict.error_rate_p > 0.05
    assert verdict.latency_p is None and verdict.outcome == "wait"
    assert verdict.note == ("too few answered requests to judge latency: 10 canary, 100 "
                            "primary; 20 of each are needed")
    more = judge(POLICY, requests(200, errors=180, latency=1.0), primary, 120)
    assert (more.outcome, more.metric) == ("fail", "p95_ratio")
    # a failing metric still fails before 20 answers: errors are evidence enough
    broken = judge(POLICY, requests(100, errors=95), requests(1000, errors=10), 60)
    assert (broken.outcome, broken.metric) == ("fail", "error_rate")


def test_an_equal_canary_passes() -> None:
    verdict = judge(POLICY, requests(60), requests(540), 60)
    assert (verdict.outcome, verdict.metric) == ("pass", None)
    assert verdict.p95_ratio == pytest.approx(1.0, abs=0.01)
    assert verdict.trailer("host-a") == (
        "verdict=pass requests=60/540 error_rate=0.0000/0.0000 p95_ratio=0.999 rating=-/- "
        "window=60s host=host-a")


def test_error_rate_test_against_the_margin_by_hand() -> None:
    """5/100 canary vs 5/1000 primary, margin 0.01: Agresti-Caffo p = 6/102, 6/1002."""
    verdict = judge(POLICY, requests(100, errors=5), requests(1000, errors=5), 60)
    pc, pp = 6 / 102, 6 / 1002
    se = math.sqrt(pc * (1 - pc) / 102 + pp * (1 - pp) / 1002)
    expected = 0.5 * math.erfc((pc - pp - 0.01) / se / math.sqrt(2))
    assert verdict.error_rate_p == pytest.approx(expected, rel=1e-12)
    assert expected < 0.05
    assert (verdict.outcome, verdict.metric) == ("fail", "error_rate")
    assert "error rate 5.00% vs 0.50%" in verdict.note


def test_a_difference_within_the_margin_passes() -> None:
    """1/100 vs 0/1000: worse, but not significantly more than 1 point worse."""
    verdict = judge(POLICY, requests(100, errors=1), requests(1000), 60)
    assert verdict.outcome == "pass"
    pc, pp = 2 / 102, 1 / 1002
    z = (pc - pp - 0.01) / math.sqrt(pc * (1 - pc) / 102 + pp * (1 - pp) / 1002)
    assert verdict.error_rate_p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert verdict.error_rate_p == pytest.approx(0.266, abs=0.001)


def test_zero_errors_everywhere_is_not_a_failure() -> None:
    """Agresti-Caffo: the standard error is never 0, so 0/50 vs 0/50 is an honest pass."""
    verdict = judge(POLICY, requests(50), requests(50), 60)
    assert verdict.outcome == "pass" and verdict.error_rate_p is not None
    assert verdict.error_rate_p > 0.5


def test_a_twice_slower_canary_fails_on_p95() -> None:
    verdict = judge(POLICY, requests(60, latency=0.2, spread=0.02), requests(540), 60)
    assert (verdict.outcome, verdict.metric) == ("fail", "p95_ratio")
    assert verdict.p95_ratio == pytest.approx(0.2195 / 0.1095, rel=0.01)
    assert verdict.latency_p is not None and verdict.latency_p < 1e-6


def test_a_high_p95_from_a_few_outliers_is_not_significant() -> None:
    """p95 ratio 3 from 4 slow requests in 60 (6.7%, about the 5% the primary has above its
    own p95): not significant, so the canary is not aborted on noise in its tail."""
    base = requests(60)
    slow_tail = Sample(60, 0, sorted(base.latencies)[:56] + [0.3] * 4, [])
    verdict = judge(POLICY, slow_tail, requests(540), 60)
    assert verdict.p95_ratio is not None and verdict.p95_ratio > 2.5
    assert verdict.latency_p is not None and verdict.latency_p > 0.05
    assert verdict.outcome == "pass"


def test_a_slow_tail_fails_by_hand() -> None:
    """The review's case: 8 of 50 canary answers 5x slower, the rest like the primary's
    (p95 ratio 4.6; Mann-Whitney saw no shift, p=0.35, and promoted it)."""
    base = requests(50).latencies
    canary = Sample(50, 0, [x * 5 for x in base[:8]] + base[8:], [])
    verdict = judge(POLICY, canary, requests(50), 60)
    share, expected = 9 / 52, 3 / 51  # 8 above 1.5 x p95 (+1 of 2); 50 + 1 - 48 of 51
    z = (share - expected) / math.sqrt(share * (1 - share) / 52 + expected * (1 - expected) / 52)
    assert verdict.latency_p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert verdict.latency_p is not None and verdict.latency_p < 0.05
    assert verdict.p95_ratio is not None and verdict.p95_ratio > 4
    assert (verdict.outcome, verdict.metric) == ("fail", "p95_ratio")
    assert "tail test p=" in verdict.note


def _noisy(rnd: random.Random, n: int, scale: float = 1.0, *, slow: int = 0) -> Sample:
    """n answers around 0.1 s with lognormal noise (sigma 0.3), the first `slow` 5x slower."""
    latencies = [0.1 * scale * math.exp(rnd.gauss(0, 0.3)) * (5 if i < slow else 1)
                 for i in range(n)]
    return Sample(n, 0, latencies, [])


def _fails(make_canary: Callable[[random.Random], Sample], runs: int = 200) -> int:
    """In how many of `runs` seeded simulations (50 canary, 50 primary answers) the
    latency rule fails the canary."""
    failed = 0
    for seed in range(runs):
        rnd = random.Random(seed)
        canary, primary = make_canary(rnd), _noisy(rnd, 50)
        failed += judge(POLICY, canary, primary, 60).metric == "p95_ratio"
    return failed


def test_the_tail_test_holds_its_level_and_sees_a_slow_tail_under_noise() -> None:
    """200 seeded simulations each: a speed-equal canary is (almost) never failed, one
    exactly at the limit (1.5x slower throughout) at most alpha of the time, and a slow
    tail of 8 in 50 at least 80% of the time (measured: 0, 5 and 179 of 200)."""
    assert _fails(lambda rnd: _noisy(rnd, 50)) <= 200 * POLICY.alpha
    assert _fails(lambda rnd: _noisy(rnd, 50, 1.5)) <= 200 * POLICY.alpha
    assert _fails(lambda rnd: _noisy(rnd, 50, slow=8)) >= 160


def test_ratings_by_hand_and_the_minimum_of_ratings() -> None:
    canary = rated(requests(60), [2, 3] * 10)  # mean 2.5
    primary = rated(requests(540), [4, 5] * 10)  # mean 4.5
    verdict = judge(POLICY, canary, primary, 60)
    var = sum((x - 2.5) ** 2 for x in [2, 3] * 10) / 19
    z = (2.0 - 0.5) / math.sqrt(var / 20 + var / 20)
    assert verdict.rating_p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert (verdict.outcome, verdict.metric) == ("fail", "rating")
    few = judge(POLICY, rated(requests(60), [1] * 19), primary, 60)
    assert few.rating_p is None and few.outcome == "pass"  # 19 < min_ratings: not judged


def test_a_small_rating_drop_within_the_limit_passes() -> None:
    canary = rated(requests(60), [4, 5, 4, 4] * 5)  # 4.25
    primary = rated(requests(540), [4, 5] * 10)  # 4.5: a drop of 0.25 < 0.5
    assert judge(POLICY, canary, primary, 60).outcome == "pass"


def test_sample_reads_one_role_of_one_version_since_the_step() -> None:
    window: dict[str, Any] = {
        "requests": [
            {"ts": 99.0, "version": "2.1.0", "role": "canary", "ok": True, "latency_s": 9.0},
            {"ts": 100.0, "version": "2.1.0", "role": "canary", "ok": True, "latency_s": 0.2},
            {"ts": 101.0, "version": "2.1.0", "role": "canary", "ok": False, "latency_s": 0.1},
            {"ts": 101.0, "version": "2.1.0", "role": "standby", "ok": True, "latency_s": 0.1},
            {"ts": 102.0, "version": "2.0.0", "role": "primary", "ok": True, "latency_s": 0.1},
        ],
        "ratings": [{"ts": 100.5, "version": "2.1.0", "rating": 2},
                    {"ts": 90.0, "version": "2.1.0", "rating": 5}]}
    got = canaryverdict.sample(window, "2.1.0", "canary", since=100.0)
    assert got == Sample(2, 1, [0.2], [2])
    assert canaryverdict.sample(window, "2.0.0", "primary", since=100.0).requests == 1


def test_policy_from_policy_yaml() -> None:
    assert CanaryPolicy.of_environment({}, "production") == CanaryPolicy()
    table = {"canary_analysis": {"production": {"min_requests": 25, "max_p95_ratio": 2.0}}}
    got = CanaryPolicy.of_environment(table, "production")
    assert (got.min_requests, got.max_p95_ratio, got.alpha) == (25, 2.0, 0.05)
    assert got.progress_deadline is None
    table["canary_analysis"]["production"]["progress_deadline"] = 900
    assert CanaryPolicy.of_environment(table, "production").progress_deadline == 900
    table["canary_analysis"]["production"]["min_requests"] = 25.0  # the schema's integer
    assert repr(CanaryPolicy.of_environment(table, "production").min_requests) == "25"
    for key, bad in (("progress_deadline", "1h"), ("progress_deadline", True),
                     ("progress_deadline", 0), ("progress_deadline", float("inf")),
                     ("max_p95_ratio", float("nan")), ("min_requests", 25.5),
                     ("alpha", "0.05")):
        with pytest.raises(InvalidDesiredState, match=rf"canary_analysis\.production\.{key} "
                           rf"must be .*; got {bad!r}"):
            CanaryPolicy.of_environment({"canary_analysis": {"production": {key: bad}}},
                                        "production")
    with pytest.raises(InvalidDesiredState, match=r"canary_analysis\.production must be"):
        CanaryPolicy.of_environment({"canary_analysis": {"production": {"bogus": 1}}},
                                    "production")
