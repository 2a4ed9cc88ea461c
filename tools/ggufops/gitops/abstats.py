"""Significance tests for `ggufops ab`, without scipy.

- Mann-Whitney U (two-sided), normal approximation with the tie correction and a
  continuity correction of 0.5 (as scipy's `mannwhitneyu(method="asymptotic")`), for
  latencies: no assumption about their distribution.
- Two-proportion z-test (pooled, two-sided) for error rates.
- How many requests per version a difference in error rates needs to be told apart at
  alpha 0.05 with power 0.8, for the sample-size warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_ALPHA_05 = 1.959963984540054  # two-sided alpha 0.05
Z_POWER_80 = 0.8416212335729143  # power 0.8
MIN_LATENCY_SAMPLES = 20  # below this the normal approximations of U (ab) and of the
# canary's tail share (agent/canaryverdict) are poor
MIN_EXPECTED_COUNT = 5  # each cell of the 2x2 table, for the z-test's approximation


@dataclass(frozen=True)
class TestResult:
    statistic: float  # U of the first sample, or the z of the proportions
    z: float
    p_value: float


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based) of `values`, and the sizes of the groups of ties."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    ties: list[int] = []
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            result[i] = (start + end) / 2 + 1
        ties.append(end - start + 1)
        start = end + 1
    return result, ties


def mann_whitney(first: Sequence[float], second: Sequence[float]) -> TestResult:
    """Two-sided Mann-Whitney U test; ValueError when a sample is empty."""
    n1, n2 = len(first), len(second)
    if not n1 or not n2:
        raise ValueError("Mann-Whitney needs two non-empty samples")
    ranked, ties = ranks([*first, *second])
    u1 = sum(ranked[:n1]) - n1 * (n1 + 1) / 2
    n = n1 + n2
    mean = n1 * n2 / 2
    tie_term = sum(t ** 3 - t for t in ties) / (n * (n - 1)) if n > 1 else 0.0
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:
        return TestResult(u1, 0.0, 1.0)  # every value equal: no evidence of a difference
    u = max(u1, n1 * n2 - u1)
    z = (u - mean - 0.5) / math.sqrt(variance)
    return TestResult(u1, z, min(1.0, 2 * normal_sf(z)))


def two_proportions(x1: int, n1: int, x2: int, n2: int) -> TestResult:
    """Pooled two-proportion z-test of x1/n1 vs x2/n2, two-sided."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("a proportion needs at least one trial")
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return TestResult(0.0, 0.0, 1.0)  # both 0% or both 100%
    z = (x1 / n1 - x2 / n2) / se
    return TestResult(z, z, min(1.0, 2 * normal_sf(abs(z))))


def needed_per_group(p1: float, p2: float) -> int | None:
    """Requests per version to detect p1 vs p2 (alpha 0.05, power 0.8); None if equal."""
    if p1 == p2:
        return None
    spread = p1 * (1 - p1) + p2 * (1 - p2)
    return math.ceil((Z_ALPHA_05 + Z_POWER_80) ** 2 * spread / (p1 - p2) ** 2)


def proportion_test_valid(x1: int, n1: int, x2: int, n2: int) -> bool:
    """Are all four expected counts of the 2x2 table at least MIN_EXPECTED_COUNT?"""
    pooled = (x1 + x2) / (n1 + n2)
    return all(n * q >= MIN_EXPECTED_COUNT for n in (n1, n2) for q in (pooled, 1 - pooled))
