"""One message in, one outcome out: each step decides, one executor acts.

A delivery goes through these steps; the first that answers a decision
(:mod:`worker.decisions`) ends the walk, and :class:`~worker.executor.Executor`
carries the decision out (store, publish with confirms, then ack: its
docstring is the delivery guarantee)::

    decode ──────────────────────────── Reject
    gates.before_claim (check, not-before, pause) ── Reject / Defer
    claim ───────────────────────────── Reject (conflict) / Republish / Defer / Finish (outcome_unknown)
      (the recipient's opt-out lookup goes with it)
    reconcile (unsafe, after a crash) ── Finish
    gates.after_claim (cancel, quiet hours, breaker, poison) ── Finish / Defer
    handler ─────────────────────────── Finish / Continue
      └ transient error: retry.decide ── Retry / Finish

Metrics, spans and log lines follow from the decisions (:mod:`worker.observers`).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
import pika.spec
import structlog

from worker import deadline, gates, results, tracing
from worker import logging as logcontext
from worker.amqp import Channel
from worker.breaker import CircuitBreaker
from worker.clock import SYSTEM, Clock
from worker.controls import Controls
from worker.decisions import Continue, Decision, Defer, Finish, InFlight, Reject, Republish
from worker.envelope import Command, Rejection, decode
from worker.errors import (
    CommandRejected,
    InvalidPayload,
    PermanentError,
    SwitchboardError,
    TransientError,
    VendorUnavailable,
)
from worker.executor import RETURN_AFTER_BROKER_ERROR_SECONDS, Executor
from worker.leases import Leases
from worker.metrics import type_label
from worker.observers import Hooks, Observer, observers
from worker.outbox import H_ATTEMPT, Outbox
from worker.quiet_hours import SendingWindow
from worker.registry import CommandContext, CommandSpec, Registry, VendorClient
from worker.retry import Retry, RetryPolicy, decide
from worker.store import AsksAhead, Claim, ClaimStatus, Lease, RecipientAskedAhead, Stores
from worker.validation import Validators

__all__ = ["RETURN_AFTER_BROKER_ERROR_SECONDS", "Delivery", "DispatchSettings", "Dispatcher", "fingerprint"]

log = structlog.get_logger("switchboard.dispatcher")


class Delivery(NamedTuple):
    """A message as the consumer got it; ``channel`` is where to ack it (a tuple: made per message,
    without a frozen dataclass's ``object.__setattr__`` per field)."""

    channel: Channel
    delivery_tag: int
    routing_key: str
    properties: pika.spec.BasicProperties
    body: bytes
    queue: str = ""

    @property
    def redeliveries(self) -> int:
        """Times the broker delivered it before (quorum queues count them)."""
        count = (self.properties.headers or {}).get("x-delivery-count", 0)
        return int(count) if isinstance(count, int | str) and str(count).isdigit() else 0


@dataclass(frozen=True)
class DispatchSettings:
    max_message_bytes: int
    lease_seconds: float
    handler_timeout_seconds: float
    defer_seconds: float
    poison_redeliveries: int
    policy: RetryPolicy
    max_result_bytes: int = 256 * 1024
    """Largest succeeded event; past it the result's largest list is truncated (worker/results.py)."""
    reply_to_allow: frozenset[str] = frozenset()
    """Queue names accepted as ``reply_to`` besides server-named and direct reply-to ones."""
    live_lease_seconds: float = 0.0
    """Short lease renewed while a command runs (see :meth:`Dispatcher.renew_leases`); 0 = ``lease_seconds``."""

    @property
    def claim_lease_seconds(self) -> float:
        return self.live_lease_seconds or self.lease_seconds


def fingerprint(command_type: str, payload: dict[str, Any]) -> str:
    """The idempotency fingerprint of a command as published (before ``check`` normalises it)."""
    return hashlib.sha256(
        command_type.encode() + b"\0" + orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        clients: Mapping[tuple[str, str], VendorClient],
        stores: Stores,
        outbox: Outbox,
        breakers: Mapping[str, CircuitBreaker],
        settings: DispatchSettings,
        *,
        controls: Controls | None = None,
        windows: Mapping[tuple[str, str], SendingWindow] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.controls = controls or Controls(None)
        self.windows = windows if windows is not None else {}
        self.clock = clock
        self.registry = registry
        self.clients = clients
        self.stores = stores
        self.outbox = outbox
        self.breakers = breakers
        self.validators = Validators(
            list(registry.commands), {t: s.schema for t, s in registry.commands.items()}
        )
        self.rng = random.Random()
        self._loggers: dict[str, Any] = {}
        self.leases = Leases(stores.idempotency, clock)
        suppressions = stores.suppressions
        self._ask_ahead = suppressions.contains_soon if isinstance(suppressions, AsksAhead) else None
        self._on_transient: Callable[[str], None] | None = None
        self.hooks = Hooks(observers())
        self.breaker = gates.CircuitOpen(breakers)
        self.settings = settings  # builds the gates and the executor

    @property
    def settings(self) -> DispatchSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: DispatchSettings) -> None:
        """Build the gates and the executor once, from the settings (again only when they change)."""
        self._settings = settings
        self.deadlines = deadline.Deadlines(tick=deadline.tick_for(settings.handler_timeout_seconds))
        self.before_claim = gates.before_claim(
            self.validators, self.clients, self.controls, settings.defer_seconds
        )
        self.after_claim = gates.after_claim(
            self.controls, self.windows, self.breaker, settings.poison_redeliveries
        )
        self.executor = Executor(
            self.stores.idempotency,
            self.outbox,
            self.leases,
            self.hooks.observers,
            self.clock,
            types=self.registry.commands,
            max_result_bytes=settings.max_result_bytes,
            reply_to_allow=settings.reply_to_allow,
        )
        self.executor.hooks = self.hooks  # one set of hooks for both

    @property
    def on_transient(self) -> Callable[[str], None] | None:
        """Told the vendor of each call that failed transiently (the prefetch ramp holds back)."""
        return self._on_transient

    @on_transient.setter
    def on_transient(self, callback: Callable[[str], None] | None) -> None:
        self._on_transient = callback
        self.hooks = self.executor.hooks = Hooks(observers(callback))

    @property
    def observers(self) -> tuple[Observer, ...]:
        return self.hooks.observers

    async def renew_leases(self) -> None:
        """Keep the short leases of every command in flight alive (:class:`~worker.leases.Leases`)."""
        await self.leases.renew_forever(self._settings.live_lease_seconds)

    async def handle(self, delivery: Delivery) -> None:
        """Process one delivery to its end; never raises for bad input."""
        logcontext.clear_context()
        try:
            await self._handle(delivery)
        except Exception as exc:
            await self.executor.give_back(delivery, exc)

    async def _handle(self, delivery: Delivery) -> None:
        started = self.clock.monotonic()
        decoded = decode(
            delivery.body,
            delivery.properties,
            delivery.routing_key,
            self.validators,
            max_bytes=self._settings.max_message_bytes,
            reply_to_allow=self._settings.reply_to_allow,
        )
        if not tracing.state.enabled:
            await self._route(delivery, decoded, started)
            return
        command_type = decoded.type
        vendor = (
            self.registry.commands[command_type].vendor if command_type in self.registry.commands else "-"
        )
        parent = tracing.extract(delivery.properties.headers, decoded.meta)
        with tracing.process_span(
            delivery.queue, delivery.routing_key, delivery.properties.message_id, command_type, vendor, parent
        ) as span:
            trace_id = tracing.trace_id_hex(span)
            if trace_id:
                logcontext.bind_context(trace_id=trace_id)
            await self._route(delivery, decoded, started)

    async def _route(self, delivery: Delivery, decoded: Command | Rejection, started: float) -> None:
        execute = self.executor.execute
        if isinstance(decoded, Rejection):
            label = type_label(decoded.type, self.registry.commands)
            for received in self.hooks.received:
                received(label)
            logcontext.bind_context(command_id=decoded.command_id, type=decoded.type, attempt=0)
            await execute(delivery, started, Reject(decoded), None)
            return
        command = decoded
        for received in self.hooks.received:
            received(command.type)
        spec = self.registry.commands[command.type]
        previous = command.headers.get(H_ATTEMPT, 0)
        logcontext.bind_context(
            command_id=command.id,
            type=command.type,
            attempt=previous if isinstance(previous, int) else 0,
            vendor=spec.vendor,
            account=command.account,
        )
        run = InFlight(command, spec, "", started, command.payload, redeliveries=delivery.redeliveries)
        now = self.clock.time()
        for gate in self.before_claim:
            decision = gate(run, now)
            if decision is not None:
                await execute(delivery, started, decision, run)
                return
        # After the gates (a payload they refuse may not even encode), of the payload as published.
        try:
            run.fingerprint = fingerprint(command.type, command.payload)
        except orjson.JSONEncodeError:
            error = InvalidPayload("the payload cannot be encoded (nested too deeply)", path="/payload")
            await execute(delivery, started, gates.rejection(run, error), run)
            return
        if self._ask_ahead is not None and spec.recipient is not None:
            self._ask_for_recipient(run, spec.recipient, self._ask_ahead)
        try:
            decision = await self._claim(run, now)
            if decision is not None:
                await execute(delivery, started, decision, run)
                return
            lease = run.lease
            try:
                decision = await self._run(run)
                await execute(delivery, started, decision, run)
            except Exception:
                if not (run.reconcile or run.called):
                    # Failed before the vendor was called (the store or broker answered with an
                    # error): give the claim back, or its redelivery would find a lapsed lease
                    # and end an unsafe command outcome_unknown although nothing was sent.
                    await self._release_quietly(run)
                raise
            finally:
                # Only our own lease: a copy of this command that this worker claimed after we
                # released it (a doubled publish) holds a lease of its own, still to be renewed.
                self.leases.drop(run.key, lease)
        finally:
            if run.recipient_lookup is not None:
                _unread(run.recipient_lookup[1])

    @staticmethod
    def _ask_for_recipient(
        run: InFlight,
        recipient: Callable[[dict[str, Any]], str | None],
        ask: Callable[[str, str], Awaitable[Any]],
    ) -> None:
        """Send the recipient's opt-out lookup in this turn, with the claim: its round trip and the
        claim's overlap, and the handler's check reads the answer (:class:`RecipientAskedAhead`).
        When the command turns out not to run (a replay, busy elsewhere), the answer goes unread."""
        number = recipient(run.payload)
        if not number:
            return
        run.recipient_lookup = (number, ask(run.command.account, number))

    async def _claim(self, run: InFlight, now: float) -> Decision | None:
        """Take the command, or the decision when it is not ours to run (None: run it; ``run.lease`` is held)."""
        command, spec = run.command, run.spec
        store = self.stores.idempotency
        lease_seconds = self._settings.claim_lease_seconds
        claim = await store.claim(command.account, command.id, run.fingerprint, now, lease_seconds)
        if claim.status is ClaimStatus.DONE and spec.result_expires_after_seconds is not None:
            claim = await self._unless_expired(run, claim, now)
        if claim.status is ClaimStatus.CONFLICT:
            error = CommandRejected(
                "this id was already used for a different command (type or payload differ)",
                code="idempotency_conflict",
                details={"path": "/id"},
            )
            return gates.rejection(run, error)
        if claim.status is ClaimStatus.DONE:
            assert claim.event is not None
            return Republish(claim.event)
        if claim.status is ClaimStatus.BUSY:
            return Defer(
                min(self._settings.defer_seconds, max(1.0, (claim.lease_until or now) - now)),
                "claimed_elsewhere",
            )
        if claim.status is ClaimStatus.EXPIRED:
            continuation = claim.state is not None
            expired = claim
            assert claim.lease_until is not None
            # Take the lapsed lease over before deciding anything, even to end the command
            # outcome_unknown: a holder that was only late (a stalled loop, a slow store)
            # renews it meanwhile, and then the command is still running, not lost.
            claim = await store.take_over(command.account, command.id, claim.lease_until, now, lease_seconds)
            if claim.status is not ClaimStatus.ACQUIRED:
                return Defer(self._settings.defer_seconds, "claimed_elsewhere")
            if not (spec.safe_to_repeat or continuation or spec.reconcile):
                run.attempts = expired.attempts
                return Finish(gates.outcome_unknown(expired.attempt_started_at))
            run.reconcile = not (spec.safe_to_repeat or continuation)
            run.resumed = True
        run.attempts = claim.attempts
        run.first_at = claim.first_attempt_at or now
        run.state = claim.state
        run.lease = Lease(command.account, command.id, claim.attempt_started_at or now)
        self.leases.hold(run.key, run.lease)  # renewed by renew_leases when leases are short
        return None

    async def _unless_expired(self, run: InFlight, claim: Claim, now: float) -> Claim:
        """A stored result past its expiry: run again when safe (a fresh result), else flag it."""
        command, spec = run.command, run.spec
        assert claim.event is not None
        stored = orjson.loads(claim.event)
        if not results.expired(stored, spec.result_expires_after_seconds, now):
            return claim
        if spec.safe_to_repeat:
            log.info("the stored result has expired; running the command again for a fresh one")
            await self.stores.idempotency.forget(command.account, command.id)
            return await self.stores.idempotency.claim(
                command.account, command.id, run.fingerprint, now, self._settings.claim_lease_seconds
            )
        stored["result_expired"] = True
        return claim._replace(event=orjson.dumps(stored))

    async def _release_quietly(self, run: InFlight) -> None:
        """Give back a claim whose attempt never reached the vendor; a store error is only logged."""
        if run.lease is None or self.leases.held.get(run.key) is not run.lease:
            return  # already released or completed
        try:
            await self.executor.release(run, run.state, waiting=True)
        except Exception:
            log.warning("could not give the claim back; it frees when its lease lapses", exc_info=True)

    async def _run(self, run: InFlight) -> Decision:
        """The command is ours: reconcile, the held gates, the handler, and what its outcome means."""
        logcontext.bind_context(attempt=run.attempts)
        if run.reconcile:
            found = await self._reconcile(run)
            if found is not None:
                return found
        now = self.clock.time()
        for gate in self.after_claim:
            decision = await gate(run, now)
            if decision is not None:
                return decision
        spec = run.spec
        ctx = self._context(run)
        timer = self.clock.monotonic()
        run.called = True
        outcome = await self._call(spec, run.payload, ctx)
        seconds = self.clock.monotonic() - timer
        self.breaker.record(spec.vendor, outcome)
        for handled in self.hooks.handled:
            handled(spec.type, spec.vendor, seconds, outcome)
        if isinstance(outcome, TransientError):
            return self._after_transient(run, outcome)
        if isinstance(outcome, Continue):
            return outcome
        return Finish(outcome)

    async def _reconcile(self, run: InFlight) -> Decision | None:
        """Unsafe command after a crash: ask the vendor before doing it again (None: it was not done)."""
        assert run.spec.reconcile is not None
        try:
            found = await asyncio.wait_for(
                run.spec.reconcile(run.payload, self._context(run)), self._settings.handler_timeout_seconds
            )
        except (TimeoutError, SwitchboardError):
            return Finish(gates.outcome_unknown(None))
        return None if found is None else Finish(found)

    def _after_transient(self, run: InFlight, error: TransientError) -> Retry | Finish:
        spec = run.spec
        policy = self._settings.policy
        if spec.max_attempts or spec.max_age_seconds:
            policy = RetryPolicy(
                max_attempts=spec.max_attempts or policy.max_attempts,
                max_age_seconds=spec.max_age_seconds or policy.max_age_seconds,
                base_seconds=policy.base_seconds,
                cap_seconds=policy.cap_seconds,
            )
        decision = decide(
            error,
            attempts=run.attempts,
            age_seconds=self.clock.time() - run.first_at,
            safe_to_repeat=spec.safe_to_repeat or run.state is not None,
            policy=policy,
            rng=self.rng,
        )
        return decision if isinstance(decision, Retry) else Finish(decision)

    def _handler_log(self, vendor: str) -> Any:
        logger = self._loggers.get(vendor)
        if logger is None:
            logger = self._loggers[vendor] = structlog.get_logger(f"switchboard.handlers.{vendor}")
        return logger

    def _context(self, run: InFlight) -> CommandContext[Any]:
        command = run.command
        return CommandContext(
            command_id=command.id,
            type=command.type,
            account=command.account,
            attempt=run.attempts,
            meta=command.meta,
            client=self.clients[(run.spec.vendor, command.account)],
            log=self._handler_log(run.spec.vendor),
            first_attempt_at=datetime.fromtimestamp(run.first_at, UTC),
            suppressions=(
                self.stores.suppressions
                if run.recipient_lookup is None
                else RecipientAskedAhead(self.stores.suppressions, command.account, *run.recipient_lookup)
            ),
            state=run.state,
            resumed=run.resumed,
        )

    async def _call(
        self, spec: CommandSpec, payload: dict[str, Any], ctx: CommandContext[Any]
    ) -> dict[str, Any] | Continue | SwitchboardError:
        """The handler's outcome as a value; it never raises."""
        try:
            # Not wait_for (one more task per command), nor asyncio.timeout (a timer per command).
            async with self.deadlines(self._settings.handler_timeout_seconds) as timeout:
                token = deadline.current.set(timeout)  # handlers may extend it for sized work (uploads)
                try:
                    return await spec.handler(payload, ctx)
                finally:
                    deadline.current.reset(token)
        except CommandRejected as exc:
            # Only the envelope and the checks before the claim reject (and nothing of a
            # rejection is stored). A handler that finds the payload wrong has claimed and
            # maybe called the vendor: the command ends failed, its code kept.
            return PermanentError(exc.message, code=exc.code, details=exc.details)
        except SwitchboardError as exc:
            return exc
        except TimeoutError:
            return VendorUnavailable(
                f"handler did not finish within {self._settings.handler_timeout_seconds}s",
                code="handler_timeout",
                maybe_applied=True,
            )
        except Exception as exc:
            log.exception("handler raised an unexpected error")
            return PermanentError(
                f"internal error in the handler: {exc.__class__.__name__}", code="internal_error"
            )


def _unread(answer: Awaitable[Any]) -> None:
    """The command is done with its recipient's lookup: a failure nobody read (the command did not
    run, or ended before its handler asked) is not logged as never retrieved. Checked once the
    command is settled, when the lookup has almost always answered: no callback a command."""
    if isinstance(answer, asyncio.Future):
        if answer.done():
            _consume(answer)
        else:
            answer.add_done_callback(_consume)


def _consume(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()
