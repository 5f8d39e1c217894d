"""The prefetch ramp: every settled delivery counts, a transient vendor failure restarts the batch."""

from __future__ import annotations

import asyncio

from worker.config import Settings
from worker.registry import Registry
from worker.runtime import Runtime


async def ramping_runtime() -> Runtime:
    runtime = Runtime(Settings(prefetch_start=4, max_in_flight=64), Registry())
    runtime.prefetch["pidj"] = 4
    runtime._ramp_successes["pidj"] = 0
    return runtime


async def test_settled_deliveries_double_the_prefetch_without_vendor_calls() -> None:
    """Four settled deliveries (replays, rejections: no vendor call) raise a prefetch of 4 to 8."""
    runtime = await ramping_runtime()
    for _ in range(4):
        runtime._delivery_settled("pidj")
    assert runtime.prefetch["pidj"] == 8
    await asyncio.gather(*runtime._background)  # the re-subscribe finds no consumer: nothing to do


async def test_a_transient_failure_restarts_the_batch() -> None:
    """Three settled, one transient failure, three settled: still the first prefetch."""
    runtime = await ramping_runtime()
    for _ in range(3):
        runtime._delivery_settled("pidj")
    runtime._vendor_failed("pidj")
    for _ in range(3):
        runtime._delivery_settled("pidj")
    assert runtime.prefetch["pidj"] == 4
