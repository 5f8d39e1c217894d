"""The leases of the commands this worker runs now, renewed together.

A worker that dies stops renewing, so its commands are free
``live_lease_seconds`` after it died instead of ``lease_seconds``; a live one
never loses a lease to a slow call.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from worker.clock import Clock
from worker.store import IdempotencyStore, Lease

log = structlog.get_logger("switchboard.dispatcher")

Key = tuple[str, str]
"""(account, command id)"""


class Leases:
    def __init__(self, store: IdempotencyStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.held: dict[Key, Lease] = {}
        """Attempts this worker runs now: their leases are renewed together."""
        self.settling: set[Key] = set()
        """Attempts whose outcome is being stored: a renewal that finds them done is not a lost lease."""

    def hold(self, key: Key, lease: Lease) -> None:
        self.held[key] = lease

    def drop(self, key: Key, lease: Lease | None) -> bool:
        """Stop renewing ``lease`` (only that one: a later copy of the command may hold its own)."""
        if self.held.get(key) is lease and key in self.held:
            del self.held[key]
            return True
        return False

    async def renew_forever(self, lease_seconds: float) -> None:
        """One store call per round, every third of the lease."""
        period = lease_seconds / 3
        # The beat is scheduling, not the command's time: it follows the event loop's clock.
        due = time.monotonic() + period
        while True:
            # Rounds keep their beat however long a store call takes (a slow round does
            # not push the next one back), and a failed round is retried within a second.
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due = max(due + period, time.monotonic())
            held = list(self.held.values())
            if not held:
                continue
            try:
                renewed = await self.store.renew(held, self.clock.time(), lease_seconds)
            except Exception:
                log.warning("renewing leases failed; retrying", leases=len(held), exc_info=True)
                due = min(due, time.monotonic() + min(1.0, period))
                continue
            for lease, ok in zip(held, renewed, strict=True):
                # Not renewed and still ours: the lease lapsed (a stall longer than the lease)
                # and another worker took the command over. Finished ones are gone from held.
                key = (lease.account, lease.command_id)
                if not ok and self.held.get(key) is lease and key not in self.settling:
                    log.warning("lease lost while running a command", command_id=lease.command_id)
