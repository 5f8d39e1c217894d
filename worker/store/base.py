"""The store shared by workers: idempotency records and the suppression list.

One interface, several backends (``sqlite``, ``redis``); every operation that
decides something is atomic in the backend, so two workers can never both
believe they own a command.

A record goes through these states::

    (none) --claim--> running --complete--> done (terminal event kept)
                        |  ^
              release   v  | claim
                 pending | waiting     (a retry | a continuation is scheduled)

A ``running`` record whose lease expired means a worker died mid-attempt.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable


class ClaimStatus(enum.Enum):
    ACQUIRED = "acquired"  # we own it now: run the handler
    DONE = "done"  # already finished: ``event`` holds the stored terminal event
    BUSY = "busy"  # another worker holds a live lease until ``lease_until``
    EXPIRED = "expired"  # a lease ran out with no outcome: a worker died mid-attempt
    CONFLICT = "conflict"  # same key, different fingerprint


class Claim(NamedTuple):
    """What a claim found (a tuple: one is made per command, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, four times slower)."""

    status: ClaimStatus
    attempts: int = 0
    """Attempts made so far, including this one when ``ACQUIRED``."""
    first_attempt_at: float | None = None
    attempt_started_at: float | None = None
    lease_until: float | None = None
    state: dict[str, Any] | None = None
    event: bytes | None = None


class Lease(NamedTuple):
    """A running attempt this worker holds: renewed while its handler runs (a tuple, as :class:`Claim`)."""

    account: str
    command_id: str
    attempt_started_at: float


class IdempotencyStore(Protocol):
    """Keyed by (account, command id); times are Unix seconds."""

    async def claim(
        self, account: str, command_id: str, fingerprint: str, now: float, lease_seconds: float
    ) -> Claim: ...

    async def take_over(
        self, account: str, command_id: str, expected_lease_until: float, now: float, lease_seconds: float
    ) -> Claim:
        """Claim an expired lease; ACQUIRED only if nobody else took it first."""
        ...

    async def release(
        self,
        account: str,
        command_id: str,
        state: dict[str, Any] | None = None,
        *,
        waiting: bool = False,
        started: float | None = None,
    ) -> None:
        """Give the claim back: ``pending`` (a retry is scheduled; the next claim
        counts a new attempt) or, with ``waiting``, a continuation is scheduled
        (the next claim resumes with ``state`` and counts no attempt).

        With ``started`` (the attempt's ``attempt_started_at``) only that attempt's
        claim is given back: a worker whose lease lapsed and was taken over must
        not free the attempt that took it over (a third worker would run it too)."""
        ...

    async def complete(
        self, account: str, command_id: str, fingerprint: str, event: bytes, now: float
    ) -> bytes:
        """Store the terminal event; returns the event that is stored.

        When a terminal event is already stored (a race lost to another worker),
        that one is kept and returned, so one command never has two outcomes.
        """
        ...

    async def forget(self, account: str, command_id: str) -> bool:
        """Drop a record (operator replay with the same id after a fix)."""
        ...

    async def renew(self, leases: list[Lease], now: float, lease_seconds: float) -> list[bool]:
        """Extend to ``now + lease_seconds`` the leases of attempts still running, in one round trip.

        An attempt is known by the ``attempt_started_at`` its claim returned, so a lease
        another worker took over is never extended; ``False`` = that lease is no longer ours.
        """
        ...

    async def prune(self, now: float) -> int:
        """Remove records past their retention; returns how many."""
        ...

    async def close(self) -> None: ...


class SuppressionList(Protocol):
    """Numbers (E.164) that opted out, per account. Shared by all workers.

    Each entry keeps the ``source`` that added it, so a vendor's opt-in can take
    off only what that vendor's opt-out put on (an operator's entry, e.g. a
    legal hold, stays until an operator removes it).
    """

    async def add(
        self, account: str, number: str, *, reason: str, source: str, now: float, keep_existing: bool = False
    ) -> None:
        """Add or update an entry; with ``keep_existing`` an entry already there is left as it is."""
        ...

    async def remove(self, account: str, number: str, *, source: str | None = None) -> bool:
        """Remove an entry (only one added by ``source`` when given); True when one was removed."""
        ...

    async def contains(self, account: str, number: str) -> bool: ...

    async def list(self, account: str | None = None) -> list[dict[str, Any]]: ...


@runtime_checkable
class AsksAhead(Protocol):
    """A suppression list whose lookups can go with this loop turn's other store calls (every backend).

    ``contains_soon`` sends the lookup with this loop turn's other store calls and
    returns the answer to come (truthy: the number is on the list). The dispatcher
    asks for a command's recipient together with its claim (see
    :class:`RecipientAskedAhead`): the two travel in the same turn instead of one
    round trip after the other (Redis, PostgreSQL), or are read in one transaction
    instead of two (SQLite).
    """

    def contains_soon(self, account: str, number: str) -> Awaitable[Any]: ...


class RecipientAskedAhead:
    """The suppression list as one command's handler sees it: its recipient was asked for with the claim.

    ``contains`` of that number answers what the lookup sent with the claim found (or
    raises what it raised); anything else goes to the list itself.
    """

    __slots__ = ("_account", "_answer", "_list", "_number")

    def __init__(
        self, suppressions: SuppressionList, account: str, number: str, answer: Awaitable[Any]
    ) -> None:
        self._list = suppressions
        self._account = account
        self._number = number
        self._answer = answer

    async def contains(self, account: str, number: str) -> bool:
        if number == self._number and account == self._account:
            return bool(await self._answer)
        return await self._list.contains(account, number)

    async def add(
        self, account: str, number: str, *, reason: str, source: str, now: float, keep_existing: bool = False
    ) -> None:
        await self._list.add(
            account, number, reason=reason, source=source, now=now, keep_existing=keep_existing
        )

    async def remove(self, account: str, number: str, *, source: str | None = None) -> bool:
        return await self._list.remove(account, number, source=source)

    async def list(self, account: str | None = None) -> list[dict[str, Any]]:
        return await self._list.list(account)


class Deduper(Protocol):
    """Remembers keys for a while (inbound webhook retries)."""

    async def first_time(self, key: str, now: float, ttl_seconds: float) -> bool: ...

    async def forget(self, key: str) -> None:
        """Drop a key, so a delivery whose handling failed is taken as new when retried."""
        ...


class ControlStore(Protocol):
    """Operator controls shared by every worker: small JSON values by key, with an expiry."""

    async def put_control(self, key: str, value: dict[str, Any], expires_at: float) -> None: ...

    async def remove_control(self, key: str) -> bool: ...

    async def controls(self, now: float) -> dict[str, dict[str, Any]]:
        """Every live control (keys ``pause:...``, ``cancel:...``)."""
        ...

    async def peek(self, account: str, command_id: str) -> dict[str, Any] | None:
        """What the store knows of a command: ``status`` (running, pending, waiting, done),
        ``attempts``, ``first_attempt_at``, ``attempt_started_at`` and, when done, ``event``."""
        ...


@dataclass(frozen=True)
class BreakerRecord:
    """A vendor's circuit breaker as the fleet sees it; times are Unix seconds."""

    open_until: float
    """The cool-down ends then; after it one worker may probe."""
    probe_until: float = 0.0
    """A worker holds the probe until then (0: nobody); if it dies, the next probe waits for this."""


class BreakerStore(Protocol):
    """Circuit breakers shared by every worker, by key (the vendor): an outage is found once for the fleet."""

    async def breaker(self, key: str) -> BreakerRecord | None:
        """The open breaker, or None when it is closed."""
        ...

    async def trip(self, key: str, open_until: float) -> None:
        """Open (or open again) until ``open_until``; any probe lease ends."""
        ...

    async def take_probe(self, key: str, now: float, probe_until: float) -> tuple[bool, BreakerRecord | None]:
        """Atomically take the one probe: granted only when the cool-down is over and nobody holds it.

        Returns (granted, the record as it is now); a None record means the breaker is closed.
        """
        ...

    async def reset(self, key: str) -> None:
        """Close the breaker for the fleet (a probe succeeded)."""
        ...
