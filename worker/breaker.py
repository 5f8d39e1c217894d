"""Per-vendor circuit breaker: stop calling a vendor that keeps failing.

closed --(N consecutive transient vendor failures)--> open
open   --(cool-down elapsed)--> half-open: a few probe commands run
half-open --(a probe succeeds)--> closed;  --(a probe fails)--> open again

While open, the runtime stops consuming that vendor's queue (the other vendor
carries on) and sends back, through a delay queue, any command of that vendor
it already holds, without calling the vendor.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from worker.metrics import BREAKER_STATE


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
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.vendor = vendor
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.probes = probes
        self.clock = clock
        self.on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probes_out = 0
        BREAKER_STATE.labels(vendor).set(0)

    def _set(self, state: BreakerState) -> None:
        if state == self.state:
            return
        self.state = state
        BREAKER_STATE.labels(self.vendor).set(int(state))
        if self.on_change is not None:
            self.on_change(self.vendor, state)

    def allow(self) -> bool:
        """May a command call the vendor now?"""
        if self.state == BreakerState.OPEN:
            if self.clock() - self.opened_at < self.cooldown_seconds:
                return False
            self._probes_out = 0
            self._set(BreakerState.HALF_OPEN)
        if self.state == BreakerState.HALF_OPEN:
            if self._probes_out >= self.probes:
                return False
            self._probes_out += 1
        return True

    def remaining_cooldown(self) -> float:
        return max(0.0, self.cooldown_seconds - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        self.failures = 0
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """A transient vendor failure (5xx, timeout, connection error, 429)."""
        self.failures += 1
        if self.state == BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self._set(BreakerState.OPEN)
