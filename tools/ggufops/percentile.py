"""Percentiles: the two definitions the product uses, in one place (q in 0..100 for both).

`interpolated` is linear interpolation between the closest ranks (numpy's default, R's
type 7): for reports and benchmarks, where a p95 of a few samples should move smoothly.
`nearest_rank` is the smallest sample with at least q% of the samples at or below it: for
rollback triggers and canary analysis, where a threshold compares against a latency that
some request really had.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def interpolated(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of a non-empty sample (ValueError when empty)."""
    if not values:
        raise ValueError("the percentile of an empty sample")
    ordered = sorted(values)
    index = (len(ordered) - 1) * q / 100
    lo, hi = int(index), min(int(index) + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (index - lo))


def nearest_rank(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty sample (ValueError when empty)."""
    if not values:
        raise ValueError("the percentile of an empty sample")
    return float(sorted(values)[rank(len(values), q) - 1])


def rank(n: int, q: float) -> int:
    """The 1-based rank in n sorted values of their nearest-rank q-th percentile."""
    return max(1, math.ceil(q / 100 * n))
