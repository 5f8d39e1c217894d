"""Breakers of several workers sharing one store (SQLite in memory): one outage, one probe, one state."""

from __future__ import annotations

import asyncio

from worker.breaker import BreakerState, CircuitBreaker
from worker.store.sqlite import SQLiteBreakerStore, connect


def fleet(size: int, now: list[float]) -> list[CircuitBreaker]:
    store = SQLiteBreakerStore(connect(":memory:"))
    return [
        CircuitBreaker("pidj", failure_threshold=3, cooldown_seconds=10, clock=lambda: now[0], shared=store)
        for _ in range(size)
    ]


async def settle(breakers: list[CircuitBreaker]) -> None:
    """Let the background store writes finish, then every worker reads the store."""
    await asyncio.gather(*(write for b in breakers for write in list(b._writes)))
    for breaker in breakers:
        await breaker.sync()


async def test_one_worker_opens_it_for_all_and_a_new_one_starts_open() -> None:
    """Threshold reached on one worker: the others (and one started later) are open without a failure of their own."""
    now = [1000.0]
    first, second, third = fleet(3, now)
    for _ in range(3):
        first.record_failure()
    await settle([first, second, third])
    assert [b.state for b in (first, second, third)] == [BreakerState.OPEN] * 3
    assert not await second.admit() and second.remaining_cooldown() == 10
    late = CircuitBreaker(
        "pidj", failure_threshold=3, cooldown_seconds=10, clock=lambda: now[0], shared=first.shared
    )
    await late.sync()
    assert late.blocked()


async def test_exactly_one_probe_per_cooldown_for_the_fleet() -> None:
    """After the cool-down, of all workers asking only one may call; a failed probe opens it for all again."""
    now = [1000.0]
    breakers = fleet(4, now)
    for _ in range(3):
        breakers[0].record_failure()
    await settle(breakers)
    now[0] += 10
    admitted = [await b.admit() for b in breakers]
    assert admitted.count(True) == 1
    prober = breakers[admitted.index(True)]
    assert prober.state == BreakerState.HALF_OPEN
    assert not any([await b.admit() for b in breakers])  # no second call while the probe runs
    prober.record_failure()
    await settle(breakers)
    now[0] += 5
    assert not any([await b.admit() for b in breakers])  # a new cool-down for everyone


async def test_a_successful_probe_closes_it_for_all() -> None:
    """The prober's success resets the store; the others close at their next read."""
    now = [1000.0]
    breakers = fleet(3, now)
    for _ in range(3):
        breakers[0].record_failure()
    await settle(breakers)
    now[0] += 10
    admitted = [await b.admit() for b in breakers]
    prober = breakers[admitted.index(True)]
    prober.record_success()
    await settle(breakers)
    assert {b.state for b in breakers} == {BreakerState.CLOSED}
    assert all([await b.admit() for b in breakers])
