"""Numbers from timestamps: percentiles and rates, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks; NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rate(count: int, start: float, end: float) -> float:
    """Events per second over ``[start, end]``; NaN when the window is empty."""
    elapsed = end - start
    if count <= 0 or elapsed <= 0:
        return math.nan
    return count / elapsed


def steady_rate(receipts: Sequence[float], low: float = 0.1, high: float = 0.9) -> float:
    """Rate between the ``low`` and ``high`` fractions of the events, sorted by time.

    Leaves out the ramp-up (connections opening, the first in-flight window
    filling) and the tail (the last stragglers), so it measures the steady state.
    """
    if not 0 <= low < high <= 1:
        raise ValueError(f"need 0 <= low < high <= 1, got {low}, {high}")
    ordered = sorted(receipts)
    if len(ordered) < 2:
        return math.nan
    first = round((len(ordered) - 1) * low)
    last = round((len(ordered) - 1) * high)
    return rate(last - first, ordered[first], ordered[last])


def per_thousand(total: float, count: int) -> float:
    """``total`` for every 1,000 of ``count`` (CPU seconds per 1,000 commands)."""
    if count <= 0:
        return math.nan
    return total * 1000 / count


def ratio(value: float, ceiling: float) -> float:
    """``value / ceiling``; NaN when either is missing or the ceiling is zero."""
    if math.isnan(value) or math.isnan(ceiling) or ceiling == 0:
        return math.nan
    return value / ceiling
