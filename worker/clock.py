"""The one clock the dispatcher reads: wall time for claims, ages, retries and windows.

Injected, so tests drive time without sleeping (:class:`ManualClock`).
``monotonic`` measures durations only (an event's ``duration_ms``, handler time).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Unix seconds: what the store, the retry policy and sending windows compare."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, for durations."""
        ...


_WALL, _MONOTONIC = time.time, time.monotonic


class SystemClock:
    """The process's clocks: ``time.time`` and ``time.monotonic`` themselves (read a few
    times a command, without a Python call around each)."""

    time = staticmethod(_WALL)
    monotonic = staticmethod(_MONOTONIC)


class ManualClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


SYSTEM = SystemClock()
