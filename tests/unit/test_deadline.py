"""worker.deadline.Deadlines: asyncio.timeout's behaviour, without a timer per handler call."""

from __future__ import annotations

import asyncio

import pytest

from worker import deadline
from worker.deadline import Deadlines

TICK = 0.01


async def test_a_call_past_its_deadline_raises_timeout_error_within_a_tick() -> None:
    deadlines = Deadlines(tick=TICK)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines(0.05) as running:
            await asyncio.Event().wait()  # never set: only the deadline ends it
    assert running.expired()
    # Not before the deadline; the bound after it is generous for a loaded machine.
    assert 0.05 <= loop.time() - started < 5
    assert deadlines.running == set()


async def test_a_call_within_its_deadline_is_not_cancelled_later() -> None:
    deadlines = Deadlines(tick=TICK)
    async with deadlines(0.05) as running:
        await asyncio.sleep(0)
    # Past the deadline and several sweeps: this task must not be cancelled by it.
    await asyncio.sleep(0.1)
    assert not running.expired()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(tick=TICK)
    entered = asyncio.Event()

    async def call() -> None:
        async with deadlines(60):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines.running == set()


async def test_a_moved_deadline_is_the_one_that_counts() -> None:
    """``at_least`` pushes it out; ``paused`` stops it while waiting (as the upload budget does)."""
    deadlines = Deadlines(tick=TICK)
    loop = asyncio.get_running_loop()
    async with deadlines(0.02) as running:
        deadline.current.set(running)
        deadline.at_least(0.3)
        async with deadline.paused():
            assert running.when() is None
            await asyncio.sleep(0.1)
        assert running.when() is not None
        await asyncio.sleep(0.05)  # past the first deadline, inside the moved one
    assert not running.expired()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines(0.02) as running:
            running.reschedule(loop.time() + 0.1)
            await asyncio.Event().wait()
    assert loop.time() - started >= 0.1


async def test_no_callback_runs_while_no_deadline_does() -> None:
    """A quiet worker is not woken every tick: the sweep stops once the last deadline has left."""
    deadlines = Deadlines(tick=TICK)
    async with deadlines(60):
        assert deadlines._sweep is not None
    await asyncio.sleep(3 * TICK)
    assert deadlines._sweep is None


def test_deadlines_are_checked_a_twentieth_of_the_timeout_apart_within_bounds() -> None:
    """60 s fires by 61 s; a long timeout is still checked every second, a tiny one at most every 10 ms."""
    assert deadline.tick_for(60) == 1.0
    assert deadline.tick_for(10) == 0.5
    assert deadline.tick_for(3600) == 1.0
    assert deadline.tick_for(0.05) == 0.01
    assert deadline.tick_for(0.001) == 0.01
