"""The checks a command passes before its handler runs, in order.

Each gate looks at the command in flight and answers a decision
(:mod:`worker.decisions`) or ``None`` to let it through. The lists are built
once at start-up (:func:`before_claim`, :func:`after_claim`); the dispatcher
runs them in order and the first decision wins.

Before the claim (plain functions, no I/O)::

    PayloadCheck   account configured, payload schema, the type's own ``check``   -> Reject
    NotBefore      a long wait not over yet (``x-switchboard-not-before``)        -> Defer waiting
    Paused         an operator paused the account, type or vendor                -> Defer paused

After the claim (this worker holds the command)::

    Cancelled      an operator cancelled this command id                          -> Finish failed/cancelled
    QuietHours     outside the recipient's sending window                        -> Defer quiet_hours (+ deferred event)
    CircuitOpen    the vendor's breaker is open                                  -> Defer circuit_open
    Poison         delivered too often without an outcome                        -> Finish poison_message / outcome_unknown
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping

from worker import events
from worker.breaker import CircuitBreaker
from worker.controls import Controls
from worker.decisions import Decision, Defer, Finish, InFlight, Reject
from worker.envelope import Rejection
from worker.errors import (
    CommandRejected,
    InvalidPayload,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    TransientError,
    VendorUnavailable,
)
from worker.outbox import H_NOT_BEFORE
from worker.quiet_hours import SendingWindow
from worker.validation import Validators

Gate = Callable[[InFlight, float], Decision | None]
"""Before the claim: (command in flight, now in Unix seconds) -> a decision, or None to pass."""
HeldGate = Callable[[InFlight, float], Awaitable[Decision | None]]
"""After the claim: the same, awaited (a shared breaker asks the store)."""

NOT_BEFORE_SLACK_SECONDS = 0.5
"""A delay copy back this close to its time is run, not sent round again."""


def outcome_unknown(attempt_started_at: float | None) -> OutcomeUnknown:
    """The end of an unsafe command whose earlier attempt may have reached the vendor."""
    when = events.utc_iso(attempt_started_at) if attempt_started_at else "unknown"
    return OutcomeUnknown(
        f"an earlier attempt started at {when} did not finish (the worker stopped mid-call); "
        "the vendor may or may not have acted, so it was not repeated",
        details={"previous_attempt_started_at": when},
    )


def rejection(run: InFlight, error: CommandRejected) -> Reject:
    command = run.command
    return Reject(Rejection(error, command.id, command.type, command.account, command.meta))


class PayloadCheck:
    """The account is configured, the payload fits its schema and the type's own rules.

    The one gate that writes: on a pass, ``run.payload`` is what ``check``
    returned (normalised), which the handler receives; the command keeps the
    payload as published.
    """

    def __init__(self, validators: Validators, accounts: Collection[tuple[str, str]]) -> None:
        self.validators = validators
        self.accounts = accounts

    def __call__(self, run: InFlight, now: float) -> Decision | None:
        command, spec = run.command, run.spec
        if (spec.vendor, command.account) not in self.accounts:
            error = CommandRejected(
                f"account {command.account!r} is not configured for {spec.vendor}",
                code="unknown_account",
                details={"path": "/account"},
            )
            return rejection(run, error)
        try:
            self.validators.payloads[command.type].validate(command.payload)
            if spec.check is not None:
                run.payload = spec.check(command.payload)
        except InvalidPayload as exc:
            return rejection(run, exc)
        return None


def not_before(run: InFlight, now: float) -> Decision | None:
    """A wait longer than the longest delay queue comes back early: send it round again."""
    due = run.command.headers.get(H_NOT_BEFORE)
    if isinstance(due, int) and due / 1000 - now > NOT_BEFORE_SLACK_SECONDS:
        return Defer(due / 1000 - now, "waiting")
    return None


class Paused:
    """An operator paused the account, the type or the vendor: look again later (growing waits)."""

    def __init__(self, controls: Controls, floor_seconds: float) -> None:
        self.controls = controls
        self.floor_seconds = floor_seconds

    def __call__(self, run: InFlight, now: float) -> Decision | None:
        command = run.command
        wait = self.controls.paused_wait(command.account, command.type, run.spec.vendor, self.floor_seconds)
        return None if wait is None else Defer(wait, "paused")


class Cancelled:
    """An operator cancelled this command: it ends failed/cancelled when its turn comes."""

    def __init__(self, controls: Controls) -> None:
        self.controls = controls

    async def __call__(self, run: InFlight, now: float) -> Decision | None:
        cancelled = self.controls.cancellation(run.command.account, run.command.id)
        if cancelled is None:
            return None
        reason = cancelled.get("reason") or "no reason given"
        return Finish(
            PermanentError(f"cancelled by an operator: {reason}", code="cancelled", details=cancelled)
        )


class QuietHours:
    """Outside the account's sending window (in the recipient's zone): wait for its opening."""

    def __init__(self, windows: Mapping[tuple[str, str], SendingWindow]) -> None:
        self.windows = windows

    async def __call__(self, run: InFlight, now: float) -> Decision | None:
        spec = run.spec
        window = self.windows.get((spec.vendor, run.command.account))
        if window is None or spec.recipient is None:
            return None
        opening = window.next_opening(spec.recipient(run.payload), now)
        if opening is None:
            return None
        interim = {"reason": "quiet_hours", "until": opening.isoformat(), "time_zone": str(opening.tzinfo)}
        return Defer(opening.timestamp() - now, "quiet_hours", interim)


class CircuitOpen:
    """The vendor's breaker is open: wait out its cooldown instead of calling.

    Holds the breakers mapping itself (not a copy): the runtime fills it as vendors start.
    """

    def __init__(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        self.breakers = breakers

    async def __call__(self, run: InFlight, now: float) -> Decision | None:
        breaker = self.breakers.get(run.spec.vendor)
        if breaker is None or await breaker.admit():
            return None
        return Defer(max(1.0, breaker.remaining_cooldown()), "circuit_open")

    def record(self, vendor: str, outcome: object) -> None:
        """Feed the breaker the handler's outcome: an unavailable vendor counts, any answer resets."""
        breaker = self.breakers.get(vendor)
        if breaker is None:
            return
        if isinstance(outcome, VendorUnavailable | RateLimited):
            breaker.record_failure()
        elif not isinstance(outcome, TransientError):
            breaker.record_success()


class Poison:
    """Delivered this often without an outcome, it kills workers: end it instead of running it."""

    def __init__(self, redeliveries: int) -> None:
        self.redeliveries = redeliveries

    async def __call__(self, run: InFlight, now: float) -> Decision | None:
        if run.redeliveries < self.redeliveries:
            return None
        if run.spec.safe_to_repeat or run.state is not None:
            return Finish(
                PermanentError(
                    f"delivered {run.redeliveries} times without an outcome (workers stopped while running it)",
                    code="poison_message",
                )
            )
        return Finish(outcome_unknown(None))


def before_claim(
    validators: Validators, accounts: Collection[tuple[str, str]], controls: Controls, defer_seconds: float
) -> tuple[Gate, ...]:
    return (PayloadCheck(validators, accounts), not_before, Paused(controls, defer_seconds))


def after_claim(
    controls: Controls,
    windows: Mapping[tuple[str, str], SendingWindow],
    breaker: CircuitOpen,
    poison_redeliveries: int,
) -> tuple[HeldGate, ...]:
    return (Cancelled(controls), QuietHours(windows), breaker, Poison(poison_redeliveries))
