"""Speed verdicts from paired runs: the change, its confidence interval, what it means.

Candidate and baseline run back to back, alternating which goes first, so each pair of
runs shares whatever else the machine is doing; a pair gives one log-ratio
log(candidate / baseline). Pairs come in rounds, and every round loads both models afresh,
so rounds also differ by what one load happens to be good or bad at (memory placement:
a few percent on these machines).

The change is the median of all the paired ratios. Its confidence interval comes from a
two-stage (cluster) bootstrap: draw rounds with replacement, then pairs within each drawn
round, take the median; 2,000 times, with a fixed seed, so the same samples always give
the same interval. Drawing rounds puts the spread between loads and between moments of
machine load into the interval, not only the spread between pairs of one round. A
bootstrap over few clusters is too narrow, so the interval is then widened around the
median by t(R-1)/z * sqrt(R/(R-1)) for R rounds (the usual small-sample correction for
clustered data: 2.7x for 3 rounds, 1.4x for 6, 1.2x for 12).

A verdict compares the interval with the limit (1 - max_slowdown for a throughput, where
higher is better; 1 + max_slowdown for a latency):

  slower        the whole interval is beyond the limit: the candidate is slower than allowed
  within        the whole interval is inside the limit
  inconclusive  the interval straddles the limit: measure more, or pass with a warning
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SLOWER, WITHIN, INCONCLUSIVE = "slower", "within", "inconclusive"
RESAMPLES = 2000
SEED = 20261130
BATCH = 250  # resamples drawn at once: bounds memory for many rounds of many pairs
TINY = 1e-12


@dataclass(frozen=True)
class Estimate:
    """candidate / baseline, with its confidence interval and the evidence behind it."""

    ratio: float  # median of the paired ratios
    low: float
    high: float
    confidence: float
    rounds: int
    pairs: int

    def shifted(self, factor: float) -> Estimate:
        """The same estimate for a figure `factor` times the measured one (e.g. per byte)."""
        return Estimate(self.ratio * factor, self.low * factor, self.high * factor,
                        self.confidence, self.rounds, self.pairs)


def log_ratios(baseline: Sequence[float], candidate: Sequence[float]) -> list[float]:
    """log(candidate / baseline) for each pair of runs (figures are positive by nature; a
    zero from a coarse clock is taken as the smallest positive one)."""
    return [math.log(max(c, TINY) / max(b, TINY))
            for b, c in zip(baseline, candidate, strict=True)]


def estimate(rounds: Sequence[Sequence[float]], confidence: float = 0.95, *,
             resamples: int = RESAMPLES) -> Estimate:
    """Median paired ratio and its two-stage bootstrap interval, from rounds of log-ratios."""
    kept = [list(r) for r in rounds if r]
    if not kept:
        raise ValueError("no paired runs to estimate a speed change from")
    pooled = np.concatenate([np.asarray(r, dtype=np.float64) for r in kept])
    centre = float(np.median(pooled))
    medians = _bootstrap_medians(kept, resamples)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = (float(x) for x in np.percentile(medians, [tail, 100.0 - tail]))
    widen = small_sample_factor(len(kept), confidence)
    return Estimate(math.exp(centre), math.exp(centre - widen * (centre - low)),
                    math.exp(centre + widen * (high - centre)), confidence, len(kept),
                    int(pooled.size))


def small_sample_factor(clusters: int, confidence: float) -> float:
    """How much wider an interval from `clusters` rounds must be: t(R-1)/z * sqrt(R/(R-1))."""
    if clusters < 2:
        return 1.0
    z = statistics.NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    t = t_quantile(confidence, clusters - 1)
    return t / z * math.sqrt(clusters / (clusters - 1))


def t_quantile(coverage: float, df: int) -> float:
    """t such that P(|T| <= t) = coverage for Student's t with `df` (integer) degrees."""
    lo, hi = 0.0, 1e7
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _t_coverage(mid, df) < coverage else (lo, mid)
    return (lo + hi) / 2.0


def _t_coverage(t: float, df: int) -> float:
    """P(|T| <= t): the closed forms for integer df (Abramowitz & Stegun 26.7.3, 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2.0 * theta / math.pi
    term = math.cos(theta)
    total = term
    for k in range(1, (df - 1) // 2):
        term *= cos2 * (2 * k) / (2 * k + 1)
        total += term
    return 2.0 / math.pi * (theta + math.sin(theta) * total)


def _bootstrap_medians(rounds: list[list[float]], resamples: int) -> npt.NDArray[np.float64]:
    """Medians of `resamples` two-stage resamples: rounds, then pairs within each round."""
    rng = np.random.default_rng(SEED)
    sizes = np.array([len(r) for r in rounds])
    table = np.full((len(rounds), int(sizes.max())), np.nan)
    for i, r in enumerate(rounds):
        table[i, : len(r)] = r
    batches = [_resample(table, sizes, min(BATCH, resamples - start), rng)
               for start in range(0, resamples, BATCH)]
    return np.concatenate(batches)


def _resample(table: npt.NDArray[np.float64], sizes: npt.NDArray[np.int64], count: int,
              rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """`count` medians: each draws len(sizes) rounds, then that round's size of its pairs."""
    n_rounds, width = table.shape
    drawn = rng.integers(0, n_rounds, size=(count, n_rounds))
    picks = np.floor(rng.random((count, n_rounds, width)) * sizes[drawn][..., None])
    values = table[drawn[..., None], picks.astype(np.int64)]
    values[np.arange(width)[None, None, :] >= sizes[drawn][..., None]] = np.nan
    medians: npt.NDArray[np.float64] = np.nanmedian(values.reshape(count, -1), axis=1)
    return medians


def limit(higher_is_better: bool, max_slowdown: float) -> float:
    """The ratio a candidate may reach: 0.95 of a throughput, 1.05 of a latency, for 5%."""
    return 1.0 - max_slowdown if higher_is_better else 1.0 + max_slowdown


def decide(est: Estimate, *, higher_is_better: bool, max_slowdown: float) -> str:
    """slower, within or inconclusive: where the interval lies against the limit."""
    bound = limit(higher_is_better, max_slowdown)
    if higher_is_better:
        if est.high < bound:
            return SLOWER
        return WITHIN if est.low >= bound else INCONCLUSIVE
    if est.low > bound:
        return SLOWER
    return WITHIN if est.high <= bound else INCONCLUSIVE
