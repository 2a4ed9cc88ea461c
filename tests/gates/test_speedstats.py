"""Speed statistics: intervals, verdicts, and their error rates on synthetic samples.

The synthetic gates draw paired log-ratios the way the gate's runs scatter on this machine:
a spread between pairs (0.07 when one thread is timed by its CPU clock, 0.4 for wall time
under heavy load from other jobs) and a smaller shift per round (each round loads both
models afresh). A seeded generator makes every verdict here the same on every run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ggufops.gates import speedstats
from ggufops.gates.speedstats import INCONCLUSIVE, SLOWER, WITHIN


def rounds_of(ratio: float, rounds: int, pairs: int, rng: np.random.Generator, *,
              pair_sd: float, round_sd: float) -> list[list[float]]:
    """Log-ratios of a candidate `ratio` times the baseline's throughput."""
    return [list(math.log(ratio) + rng.normal(0.0, round_sd) + rng.normal(0.0, pair_sd, pairs))
            for _ in range(rounds)]


def verdicts(ratio: float, gates: int, *, pair_sd: float, round_sd: float, seed: int,
             min_rounds: int = 3, max_rounds: int = 12, pairs: int = 4) -> dict[str, int]:
    """The verdicts of `gates` synthetic gates that stop as the gate does: after
    `min_rounds`, at the first round whose interval is conclusive, else at `max_rounds`."""
    rng = np.random.default_rng(seed)
    counts = {SLOWER: 0, WITHIN: 0, INCONCLUSIVE: 0}
    for _ in range(gates):
        rounds: list[list[float]] = []
        decision = INCONCLUSIVE
        while len(rounds) < max_rounds and (decision == INCONCLUSIVE or
                                            len(rounds) < min_rounds):
            rounds += rounds_of(ratio, 1, pairs, rng, pair_sd=pair_sd, round_sd=round_sd)
            est = speedstats.estimate(rounds)
            decision = speedstats.decide(est, higher_is_better=True, max_slowdown=0.05)
        counts[decision] += 1
    return counts


def test_t_quantiles_match_the_tables() -> None:
    table = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 30: 2.042}
    for df, t in table.items():
        assert speedstats.t_quantile(0.95, df) == pytest.approx(t, abs=1e-3)
    assert speedstats.t_quantile(0.99, 4) == pytest.approx(4.604, abs=1e-3)


def test_few_rounds_widen_the_interval() -> None:
    factors = [speedstats.small_sample_factor(r, 0.95) for r in (2, 3, 6, 12, 50)]
    assert factors == sorted(factors, reverse=True)
    assert factors[1] == pytest.approx(4.303 / 1.960 * math.sqrt(1.5), rel=1e-3)
    assert 1.0 < factors[-1] < 1.1
    assert speedstats.small_sample_factor(1, 0.95) == 1.0


def test_identical_pairs_give_the_exact_ratio() -> None:
    est = speedstats.estimate([[math.log(0.8)] * 4] * 3)
    assert (est.ratio, est.low, est.high) == pytest.approx((0.8, 0.8, 0.8))
    assert (est.rounds, est.pairs, est.confidence) == (3, 12, 0.95)


def test_the_estimate_is_the_median_and_reproducible() -> None:
    rounds = [[0.1, -0.2, 0.05], [0.3, 0.0], [-0.1, 0.02, 0.04, 0.2]]  # uneven rounds
    first, again = speedstats.estimate(rounds), speedstats.estimate(rounds)
    assert first == again
    assert first.ratio == pytest.approx(math.exp(0.04))
    assert first.low < first.ratio < first.high
    assert first.pairs == 9 and first.rounds == 3


def test_no_runs_is_an_error() -> None:
    with pytest.raises(ValueError, match="no paired runs"):
        speedstats.estimate([[], []])


@pytest.mark.parametrize(("low", "high", "throughput", "latency"), [
    (0.80, 0.90, SLOWER, WITHIN),  # latency: 0.8-0.9 of the baseline's time is faster
    (0.96, 1.10, WITHIN, INCONCLUSIVE),
    (0.90, 1.00, INCONCLUSIVE, WITHIN),
    (1.06, 1.20, WITHIN, SLOWER),
    (0.95, 1.05, WITHIN, WITHIN),  # on the limit counts as within
])
def test_decisions_against_the_limit(low: float, high: float, throughput: str,
                                     latency: str) -> None:
    est = speedstats.Estimate(math.sqrt(low * high), low, high, 0.95, 4, 16)
    assert speedstats.decide(est, higher_is_better=True, max_slowdown=0.05) == throughput
    assert speedstats.decide(est, higher_is_better=False, max_slowdown=0.05) == latency


def test_shifted_scales_the_whole_interval() -> None:
    est = speedstats.Estimate(1.0, 0.9, 1.1, 0.95, 3, 12).shifted(2.0)
    assert (est.ratio, est.low, est.high) == pytest.approx((2.0, 1.8, 2.2))


# --- error rates: 20 gates each, as the issue asks of the gate ------------------------------


def test_speed_equal_models_are_never_blocked() -> None:
    steady = verdicts(1.0, 20, pair_sd=0.07, round_sd=0.02, seed=1)
    assert steady[SLOWER] == 0 and steady[WITHIN] >= 15
    noisy = verdicts(1.0, 20, pair_sd=0.4, round_sd=0.05, seed=2)
    assert noisy[SLOWER] == 0  # noise makes it inconclusive, never a false block
    hasty = verdicts(1.0, 20, pair_sd=0.07, round_sd=0.02, seed=3, min_rounds=2, max_rounds=2)
    assert hasty[SLOWER] == 0  # two rounds (a spent time budget): still no false block


def test_a_2x_slowdown_is_blocked_every_time() -> None:
    assert verdicts(0.5, 20, pair_sd=0.07, round_sd=0.02, seed=4)[SLOWER] == 20
    assert verdicts(0.5, 20, pair_sd=0.4, round_sd=0.05, seed=5)[SLOWER] == 20


def test_a_1_3x_slowdown_is_blocked_at_least_19_times_in_20() -> None:
    assert verdicts(1 / 1.3, 20, pair_sd=0.07, round_sd=0.02, seed=6)[SLOWER] >= 19
    assert verdicts(1 / 1.3, 20, pair_sd=0.2, round_sd=0.03, seed=7)[SLOWER] >= 19


def test_a_small_real_difference_is_not_called_within() -> None:
    """8% slower under a 5% limit: never "within" (it may be slower or inconclusive)."""
    counts = verdicts(0.92, 20, pair_sd=0.07, round_sd=0.02, seed=8)
    assert counts[WITHIN] == 0
