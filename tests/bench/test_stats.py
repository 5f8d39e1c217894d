"""The harness's arithmetic: percentiles, rates, per-1,000 and ratios."""

from __future__ import annotations

import math

import pytest

from bench import stats


def test_percentile_interpolates_between_ranks() -> None:
    """p50 of 1..100 is 50.5; p0 and p100 are the extremes; order of input does not matter."""
    values = list(range(100, 0, -1))
    assert stats.percentile(values, 50) == pytest.approx(50.5)
    assert stats.percentile(values, 99) == pytest.approx(99.01)
    assert stats.percentile(values, 0) == 1
    assert stats.percentile(values, 100) == 100


def test_percentile_of_nothing_is_nan_and_bad_q_raises() -> None:
    """No samples gives NaN, not a crash; a percentile outside 0..100 is a programming error."""
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_rate_and_empty_windows() -> None:
    """Events over seconds; an empty or reversed window gives NaN."""
    assert stats.rate(1000, 10.0, 12.0) == 500
    assert math.isnan(stats.rate(10, 5.0, 5.0))
    assert math.isnan(stats.rate(0, 0.0, 1.0))


def test_steady_rate_ignores_a_slow_start_and_tail() -> None:
    """Events 1 ms apart read as 1,000/s even with a 5 s gap before the first and after the last tenth."""
    steady = [10.0 + i / 1000 for i in range(1000)]
    receipts = [0.0, *steady[1:-1], 100.0]
    assert stats.steady_rate(receipts) == pytest.approx(1000, rel=0.01)


def test_per_thousand_and_ratio() -> None:
    """CPU seconds per 1,000 commands, and a ratio that is NaN without a ceiling."""
    assert stats.per_thousand(3.0, 20_000) == pytest.approx(0.15)
    assert math.isnan(stats.per_thousand(1.0, 0))
    assert stats.ratio(700, 1000) == pytest.approx(0.7)
    assert math.isnan(stats.ratio(700, math.nan))
    assert math.isnan(stats.ratio(700, 0))
