"""What should happen to a delivery, as values.

Every step of the dispatcher (the envelope, the gates, the claim, the
handler's outcome, the retry policy) answers with one of these, or ``None``
to let the command go on. Only :class:`~worker.executor.Executor` acts on
them; so a step can be tested by looking at what it returns.

==================  =====================================================
:class:`Reject`     not a valid command: ``rejected``, never stored
:class:`Finish`     the terminal outcome of a command this worker holds
:class:`Republish`  already finished: the stored event again
:class:`Defer`      not now: back through a delay queue, no attempt counted
:class:`Retry`      a transient error: back through a delay queue, an attempt counted
:class:`Continue`   the handler is not finished: its state kept, called again later
==================  =====================================================
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from worker.envelope import Command, Rejection
from worker.errors import SwitchboardError
from worker.registry import CommandSpec, Continue, Result
from worker.retry import Retry
from worker.store import Lease

__all__ = ["Continue", "Decision", "Defer", "Finish", "InFlight", "Reject", "Republish", "Retry"]


@dataclass(frozen=True, slots=True)
class Reject:
    """Not a valid command: publish ``rejected`` (and its dead letter), ack; nothing is stored,
    so the publisher may fix the message and send it again with the same id."""

    rejection: Rejection


@dataclass(frozen=True, slots=True)
class Finish:
    """End a command this worker holds: ``succeeded`` with a result, ``failed`` with an error."""

    outcome: Result | SwitchboardError


@dataclass(frozen=True, slots=True)
class Republish:
    """The command already ended: publish its stored event (and dead letter) again."""

    stored: bytes


@dataclass(frozen=True, slots=True)
class Defer:
    """Not now: back through a delay queue after ``seconds``, without counting an attempt.

    A held claim is given back first (``waiting``: the next claim counts no attempt);
    ``interim`` is the result of a ``deferred`` event to publish (quiet hours say until when).
    """

    seconds: float
    reason: str
    interim: dict[str, Any] | None = None


Decision = Reject | Finish | Republish | Defer | Retry | Continue


@dataclass(slots=True)
class InFlight:
    """One command on its way through the dispatcher: what its decision needs."""

    command: Command
    spec: CommandSpec
    fingerprint: str
    """Of the command as published (before ``check`` normalises it): one id, one payload.
    Taken once the gates before the claim have passed."""
    started: float
    """Monotonic seconds when the delivery arrived."""
    payload: dict[str, Any]
    """What the handler receives: the payload after ``check``."""
    attempts: int = 0
    first_at: float = 0.0
    """Unix seconds of the first attempt (the retry policy's age)."""
    state: dict[str, Any] | None = None
    """A continuation's state, from the claim."""
    lease: Lease | None = None
    """Set while this worker holds the command's claim."""
    redeliveries: int = 0
    """Times the broker delivered it before (poison detection)."""
    reconcile: bool = False
    """An unsafe command taken over after a crash: ask the vendor before running it again."""
    resumed: bool = False
    called: bool = False
    """The vendor call has started: from then on its outcome may exist at the vendor."""
    recipient_lookup: tuple[str, Awaitable[Any]] | None = None
    """The recipient and its opt-out lookup, sent with the claim (stores whose lookups travel)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.command.account, self.command.id)
