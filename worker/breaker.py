"""Per-vendor circuit breaker: stop calling a vendor that keeps failing.

closed --(N consecutive transient vendor failures)--> open
open   --(cool-down elapsed)--> half-open: a probe command runs
half-open --(the probe succeeds)--> closed;  --(it fails)--> open again

While open, the runtime stops consuming that vendor's queue (the other vendor
carries on) and sends back, through a delay queue, any command of that vendor
it already holds, without calling the vendor.

With a shared :class:`~worker.store.BreakerStore` the breaker is the fleet's:
the worker that opens it writes it to the store, the others read it every
``sync`` (and a worker that starts reads it before it consumes anything), and
after the cool-down exactly one worker of the fleet holds the probe (a lease
in the store, so a prober that dies is replaced after one more cool-down).
Failures are still counted per worker: a success must not cost a store write.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from worker.metrics import BREAKER_STATE
from worker.store import BreakerRecord, BreakerStore

log = structlog.get_logger("switchboard.breaker")


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        vendor: str,
        *,
        failure_threshold: int,
        cooldown_seconds: float,
        probes: int = 1,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str, BreakerState], None] | None = None,
        shared: BreakerStore | None = None,
    ) -> None:
        self.vendor = vendor
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.probes = probes
        self.clock = clock
        self.on_change = on_change
        self.shared = shared
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.open_until = 0.0
        """No call before then (the cool-down, or another worker's probe, runs until then)."""
        self._probes_out = 0
        self._writes: set[asyncio.Task[None]] = set()
        BREAKER_STATE.labels(vendor).set(0)

    def _set(self, state: BreakerState, *, notify: bool = False) -> None:
        """``notify``: tell ``on_change`` even when the state stays (open again, for longer)."""
        if state == self.state and not notify:
            return
        self.state = state
        BREAKER_STATE.labels(self.vendor).set(int(state))
        if self.on_change is not None:
            self.on_change(self.vendor, state)

    def blocked(self) -> bool:
        """Open and still cooling down: the runtime does not consume this vendor's queue."""
        return self.state == BreakerState.OPEN and self.remaining_cooldown() > 0

    def allow(self) -> bool:
        """May a command call the vendor now? (this worker alone; see :meth:`admit`)"""
        if self.state == BreakerState.OPEN:
            if self.clock() < self.open_until:
                return False
            self._probes_out = 0
            self._set(BreakerState.HALF_OPEN)
        if self.state == BreakerState.HALF_OPEN:
            if self._probes_out >= self.probes:
                return False
            self._probes_out += 1
        return True

    async def admit(self) -> bool:
        """May a command call the vendor now? With a shared store, only the fleet's one prober may probe."""
        if self.shared is None or self.state == BreakerState.CLOSED:
            return self.allow()
        if self.state == BreakerState.HALF_OPEN or self.clock() < self.open_until:
            return False  # our probe is out, or the cool-down runs
        now = self.clock()
        granted, record = await self.shared.take_probe(self.vendor, now, now + self.cooldown_seconds)
        if granted:
            self._probes_out = 1
            self._set(BreakerState.HALF_OPEN)
            log.info("probing the vendor for the fleet", vendor=self.vendor)
            return True
        if record is None:  # another worker's probe succeeded meanwhile
            self.failures = 0
            self._set(BreakerState.CLOSED)
            return True
        self._adopt(record)
        return False

    def remaining_cooldown(self) -> float:
        return max(0.0, self.open_until - self.clock())

    def record_success(self) -> None:
        self.failures = 0
        if self.state != BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)
            self._write(self._reset())

    def record_failure(self) -> None:
        """A transient vendor failure (5xx, timeout, connection error, 429)."""
        self.failures += 1
        if self.state == BreakerState.HALF_OPEN or (
            self.state == BreakerState.CLOSED and self.failures >= self.failure_threshold
        ):
            self.open_until = self.clock() + self.cooldown_seconds
            self._set(BreakerState.OPEN)
            self._write(self._trip(self.open_until))

    async def sync(self) -> None:
        """Take the fleet's state from the store (every few seconds, and before consuming)."""
        if self.shared is None or self._writes:
            return  # our own trip or reset is on its way to the store: do not read the state before it
        record = await self.shared.breaker(self.vendor)
        if record is None:
            if self.state == BreakerState.OPEN:
                self.failures = 0
                self._set(BreakerState.CLOSED)  # another worker's probe succeeded
            return
        if self.state != BreakerState.HALF_OPEN:
            self._adopt(record)

    def _adopt(self, record: BreakerRecord) -> None:
        """Open until the fleet's cool-down (or the fleet's probe) ends; tell the runtime when that moved."""
        until = max(record.open_until, record.probe_until)
        if self.state == BreakerState.OPEN and until <= self.open_until:
            return
        if self.state == BreakerState.CLOSED:
            log.warning("the fleet opened the breaker", vendor=self.vendor)
        self.open_until = until
        self._set(BreakerState.OPEN, notify=until > self.clock())

    async def _trip(self, open_until: float) -> None:
        assert self.shared is not None
        await self.shared.trip(self.vendor, open_until)

    async def _reset(self) -> None:
        assert self.shared is not None
        await self.shared.reset(self.vendor)

    def _write(self, write: Coroutine[Any, Any, None]) -> None:
        """Store the change without holding up the command that caused it."""
        if self.shared is None:
            write.close()
            return
        task = asyncio.get_running_loop().create_task(self._logged(write))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _logged(self, write: Coroutine[Any, Any, None]) -> None:
        try:
            await write
        except Exception:
            log.warning(
                "could not share the breaker's state with the fleet", vendor=self.vendor, exc_info=True
            )
