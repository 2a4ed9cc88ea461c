"""percentile.py: the two percentile definitions, against numpy's own."""

from __future__ import annotations

import numpy as np
import pytest

from ggufops.percentile import interpolated, nearest_rank

SAMPLE = [0.5, 0.1, 0.3, 0.2, 9.0]


@pytest.mark.parametrize("q", [0, 10, 25, 50, 90, 95, 99, 100])
def test_interpolated_is_numpys_linear_percentile(q: float) -> None:
    assert interpolated(SAMPLE, q) == pytest.approx(float(np.percentile(SAMPLE, q)))


@pytest.mark.parametrize("q", [0, 10, 25, 50, 90, 95, 99, 100])
def test_nearest_rank_is_a_sample_value_with_q_percent_at_or_below(q: float) -> None:
    got = nearest_rank(SAMPLE, q)
    assert got == float(np.percentile(SAMPLE, q, method="inverted_cdf"))
    assert got in SAMPLE


def test_the_two_definitions_differ_where_it_matters() -> None:
    twenty = [float(i) for i in range(1, 21)]  # 1..20
    assert nearest_rank(twenty, 95) == 19.0  # a latency some request really had
    assert interpolated(twenty, 95) == pytest.approx(19.05)


def test_an_empty_sample_is_an_error_not_a_number() -> None:
    with pytest.raises(ValueError, match="empty sample"):
        interpolated([], 50)
    with pytest.raises(ValueError, match="empty sample"):
        nearest_rank([], 95)
