"""One message in, one outcome out: decode, claim, run, record, publish, ack.

The order of the last steps is what makes the guarantees hold:

1. the terminal event is stored in the idempotency store (the first stored
   event wins; a redelivered copy republishes it instead of running again),
2. it is published (and copied to ``switchboard.dead`` when it failed or was
   rejected) and the broker confirms,
3. only then is the command acked.

A crash between any two steps leaves the command unacked; its redelivery
finds the record and does not call the vendor twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pika.spec
import structlog
from opentelemetry import trace

from worker import deadline, events, results, tracing
from worker.amqp import AMQPError, Channel
from worker.breaker import CircuitBreaker
from worker.controls import Controls
from worker.envelope import Command, Rejection, decode, reply_to_allowed
from worker.errors import (
    CommandRejected,
    InvalidPayload,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    SwitchboardError,
    TransientError,
    VendorUnavailable,
)
from worker.metrics import (
    COMMAND_ERRORS,
    COMMANDS_FINISHED,
    COMMANDS_RECEIVED,
    DEAD_LETTERS,
    DEFERRALS,
    DUPLICATES,
    HANDLER_DURATION,
    PROGRESS_EVENTS,
    RETRIES,
    type_label,
)
from worker.outbox import H_ATTEMPT, H_FIRST_SEEN, H_NOT_BEFORE, H_REASON, Outbox
from worker.quiet_hours import SendingWindow
from worker.registry import CommandContext, CommandSpec, Continue, Registry, VendorClient
from worker.retry import Retry, RetryPolicy, decide
from worker.store import Claim, ClaimStatus, Lease, Stores
from worker.validation import Validators

log = structlog.get_logger("switchboard.dispatcher")

RETURN_AFTER_BROKER_ERROR_SECONDS = 1.0
"""Pause before giving back a command whose settling the broker refused (see ``handle``)."""


@dataclass(frozen=True)
class Delivery:
    """A message as the consumer got it; ``channel`` is where to ack it."""

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


@dataclass
class _Run:
    """A command being processed: what the outcome needs to be recorded."""

    command: Command
    spec: CommandSpec
    fingerprint: str
    started: float
    attempts: int = 0
    resumed: bool = False
    called: bool = False
    """The vendor call has started: from then on its outcome may exist at the vendor."""


def fingerprint(command_type: str, payload: dict[str, Any]) -> str:
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.controls = controls or Controls(None)
        self.windows = windows if windows is not None else {}
        self.clock = clock
        self.registry = registry
        self.clients = clients
        self.stores = stores
        self.outbox = outbox
        self.breakers = breakers
        self.settings = settings
        self.validators = Validators(
            list(registry.commands), {t: s.schema for t, s in registry.commands.items()}
        )
        self.rng = random.Random()
        self._loggers: dict[str, Any] = {}
        self._held: dict[tuple[str, str], Lease] = {}
        """Attempts this worker runs now, by (account, command id): their leases are renewed together."""
        self._settling: set[tuple[str, str]] = set()
        """Attempts whose outcome is being stored: a renewal that finds them done is not a lost lease."""
        self.on_transient: Callable[[str], None] | None = None
        """Told the vendor of each call that failed transiently (the prefetch ramp holds back)."""
        """Called with the vendor after a call that did not fail transiently (the runtime ramps prefetch)."""

    async def renew_leases(self) -> None:
        """Keep the short leases of every command in flight alive, in one store call per round.

        A worker that dies stops renewing, so its commands are free ``live_lease_seconds``
        after it died instead of ``lease_seconds``; a live one never loses a lease to a slow call.
        """
        lease_seconds = self.settings.live_lease_seconds
        period = lease_seconds / 3
        due = time.monotonic() + period
        while True:
            # Rounds keep their beat however long a store call takes (a slow round does
            # not push the next one back), and a failed round is retried within a second.
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due = max(due + period, time.monotonic())
            held = list(self._held.values())
            if not held:
                continue
            try:
                renewed = await self.stores.idempotency.renew(held, time.time(), lease_seconds)
            except Exception:
                log.warning("renewing leases failed; retrying", leases=len(held), exc_info=True)
                due = min(due, time.monotonic() + min(1.0, period))
                continue
            for lease, ok in zip(held, renewed, strict=True):
                # Not renewed and still ours: the lease lapsed (a stall longer than the lease)
                # and another worker took the command over. Finished ones are gone from _held.
                key = (lease.account, lease.command_id)
                if not ok and self._held.get(key) is lease and key not in self._settling:
                    log.warning("lease lost while running a command", command_id=lease.command_id)

    async def handle(self, delivery: Delivery) -> None:
        """Process one delivery to its end; never raises for bad input."""
        structlog.contextvars.clear_contextvars()
        try:
            await self._handle(delivery)
        except AMQPError as exc:
            # Not acked: the broker redelivers it, and the store says what already happened.
            log.warning("broker lost while settling; the command will be redelivered", error=str(exc))
            # A closed channel gives it back by itself. An open one (the broker only refused the
            # publish: a quorum queue electing a leader nacks for a moment) would hold it unacked
            # until the connection closes, so give it back, after a pause so a broker that keeps
            # refusing is not asked again in a tight loop (each return counts a delivery).
            await asyncio.sleep(RETURN_AFTER_BROKER_ERROR_SECONDS)
            delivery.channel.nack(delivery.delivery_tag, requeue=True)
        except Exception:
            # A bug, not bad input: give it back; the queue's delivery limit
            # dead-letters it if it keeps failing, instead of it staying unacked.
            log.exception("unexpected error while settling a command; returning it to the queue")
            delivery.channel.nack(delivery.delivery_tag, requeue=True)

    async def _handle(self, delivery: Delivery) -> None:
        started = time.monotonic()
        decoded = decode(
            delivery.body,
            delivery.properties,
            delivery.routing_key,
            self.validators,
            max_bytes=self.settings.max_message_bytes,
            reply_to_allow=self.settings.reply_to_allow,
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
                structlog.contextvars.bind_contextvars(trace_id=trace_id)
            await self._route(delivery, decoded, started)

    async def _route(self, delivery: Delivery, decoded: Command | Rejection, started: float) -> None:
        if isinstance(decoded, Rejection):
            COMMANDS_RECEIVED.labels(type_label(decoded.type, self.registry.commands)).inc()
            structlog.contextvars.bind_contextvars(
                command_id=decoded.command_id, type=decoded.type, attempt=0
            )
            await self._reject(delivery, decoded, started)
            return
        command = decoded
        COMMANDS_RECEIVED.labels(command.type).inc()
        spec = self.registry.commands[command.type]
        previous = command.headers.get(H_ATTEMPT, 0)
        structlog.contextvars.bind_contextvars(
            command_id=command.id,
            type=command.type,
            attempt=previous if isinstance(previous, int) else 0,
            vendor=spec.vendor,
            account=command.account,
        )
        rejection = self._check(command, spec)
        if rejection is not None:
            await self._reject(delivery, rejection, started)
            return
        not_before = command.headers.get(H_NOT_BEFORE)
        if isinstance(not_before, int) and not_before / 1000 - time.time() > 0.5:
            await self._defer(delivery, command, not_before / 1000 - time.time(), "waiting")
            return
        wait = self.controls.paused_wait(
            command.account, command.type, spec.vendor, self.settings.defer_seconds
        )
        if wait is not None:
            await self._defer(delivery, command, wait, "paused")
            return
        run = _Run(command, spec, fingerprint(command.type, command.payload), started)
        await self._claim_and_run(delivery, run)

    def _check(self, command: Command, spec: CommandSpec) -> Rejection | None:
        """Account, payload schema and the handler's own rules."""
        readable: dict[str, Any] = {
            "command_id": command.id,
            "type": command.type,
            "account": command.account,
            "meta": command.meta,
        }
        if (spec.vendor, command.account) not in self.clients:
            error = CommandRejected(
                f"account {command.account!r} is not configured for {spec.vendor}",
                code="unknown_account",
                details={"path": "/account"},
            )
            return Rejection(error, **readable)
        try:
            self.validators.payloads[command.type].validate(command.payload)
            if spec.check is not None:
                command.payload = spec.check(command.payload)
        except InvalidPayload as exc:
            return Rejection(exc, **readable)
        return None

    async def _claim_and_run(self, delivery: Delivery, run: _Run) -> None:
        command, spec = run.command, run.spec
        now = time.time()
        store = self.stores.idempotency
        claim = await store.claim(
            command.account, command.id, run.fingerprint, now, self.settings.claim_lease_seconds
        )
        if claim.status is ClaimStatus.DONE and spec.result_expires_after_seconds is not None:
            claim = await self._unless_expired(run, claim, now)
        if claim.status is ClaimStatus.CONFLICT:
            error = CommandRejected(
                "this id was already used for a different command (type or payload differ)",
                code="idempotency_conflict",
                details={"path": "/id"},
            )
            await self._reject(
                delivery,
                Rejection(error, command.id, command.type, command.account, command.meta),
                run.started,
            )
            return
        if claim.status is ClaimStatus.DONE:
            assert claim.event is not None
            DUPLICATES.labels(command.type).inc()
            await self._publish_stored(delivery, command, claim.event)
            return
        if claim.status is ClaimStatus.BUSY:
            wait = min(self.settings.defer_seconds, max(1.0, (claim.lease_until or now) - now))
            await self._defer(delivery, command, wait, "claimed_elsewhere")
            return
        reconcile = False
        if claim.status is ClaimStatus.EXPIRED:
            continuation = claim.state is not None
            expired = claim
            assert claim.lease_until is not None
            # Take the lapsed lease over before deciding anything, even to end the command
            # outcome_unknown: a holder that was only late (a stalled loop, a slow store)
            # renews it meanwhile, and then the command is still running, not lost.
            claim = await store.take_over(
                command.account, command.id, claim.lease_until, now, self.settings.claim_lease_seconds
            )
            if claim.status is not ClaimStatus.ACQUIRED:
                await self._defer(delivery, command, self.settings.defer_seconds, "claimed_elsewhere")
                return
            if not (spec.safe_to_repeat or continuation or spec.reconcile):
                await self._finish(
                    delivery,
                    run,
                    self._outcome_unknown(expired.attempt_started_at),
                    attempts=expired.attempts,
                )
                return
            reconcile = not (spec.safe_to_repeat or continuation)
            run.resumed = True
        key = (command.account, command.id)
        lease = Lease(command.account, command.id, claim.attempt_started_at or now)
        self._held[key] = lease  # renewed by renew_leases when leases are short
        try:
            run.attempts = claim.attempts
            if reconcile:
                await self._reconcile_then_run(delivery, run, claim.first_attempt_at or now, claim.state)
            else:
                await self._run(delivery, run, claim.first_attempt_at or now, claim.state)
        except Exception:
            if not (reconcile or run.called):
                # Failed before the vendor was called (the store or broker answered with an
                # error): give the claim back, or its redelivery would find a lapsed lease
                # and end an unsafe command outcome_unknown although nothing was sent.
                await self._release_quietly(command, claim.state, lease)
            raise
        finally:
            # Only our own lease: a copy of this command that this worker claimed after we
            # released it (a doubled publish) holds a lease of its own, still to be renewed.
            if self._held.get(key) is lease:
                del self._held[key]

    async def _release_quietly(self, command: Command, state: dict[str, Any] | None, lease: Lease) -> None:
        """Give back a claim whose attempt never reached the vendor; a store error is only logged."""
        if self._held.get((command.account, command.id)) is not lease:
            return  # already released or completed
        try:
            await self._release(command, state, waiting=True)
        except Exception:
            log.warning("could not give the claim back; it frees when its lease lapses", exc_info=True)

    async def _unless_expired(self, run: _Run, claim: Claim, now: float) -> Claim:
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
                command.account, command.id, run.fingerprint, now, self.settings.claim_lease_seconds
            )
        stored["result_expired"] = True
        return dataclasses.replace(claim, event=orjson.dumps(stored))

    @staticmethod
    def _outcome_unknown(attempt_started_at: float | None) -> OutcomeUnknown:
        when = events.utc_iso(attempt_started_at) if attempt_started_at else "unknown"
        return OutcomeUnknown(
            f"an earlier attempt started at {when} did not finish (the worker stopped mid-call); "
            "the vendor may or may not have acted, so it was not repeated",
            details={"previous_attempt_started_at": when},
        )

    async def _reconcile_then_run(
        self, delivery: Delivery, run: _Run, first_at: float, state: dict[str, Any] | None
    ) -> None:
        """Unsafe command after a crash: ask the vendor before doing it again."""
        assert run.spec.reconcile is not None
        ctx = self._context(run, first_at, state)
        try:
            found = await asyncio.wait_for(
                run.spec.reconcile(run.command.payload, ctx), self.settings.handler_timeout_seconds
            )
        except (TimeoutError, SwitchboardError):
            await self._finish(delivery, run, self._outcome_unknown(None), attempts=run.attempts)
            return
        if found is not None:
            await self._finish(delivery, run, found, attempts=run.attempts)
            return
        await self._run(delivery, run, first_at, state)

    def _handler_log(self, vendor: str) -> Any:
        logger = self._loggers.get(vendor)
        if logger is None:
            logger = self._loggers[vendor] = structlog.get_logger(f"switchboard.handlers.{vendor}")
        return logger

    def _context(self, run: _Run, first_at: float, state: dict[str, Any] | None) -> CommandContext[Any]:
        command = run.command
        return CommandContext(
            command_id=command.id,
            type=command.type,
            account=command.account,
            attempt=run.attempts,
            meta=command.meta,
            client=self.clients[(run.spec.vendor, command.account)],
            log=self._handler_log(run.spec.vendor),
            first_attempt_at=datetime.fromtimestamp(first_at, UTC),
            suppressions=self.stores.suppressions,
            state=state,
            resumed=run.resumed,
        )

    async def _run(
        self, delivery: Delivery, run: _Run, first_at: float, state: dict[str, Any] | None
    ) -> None:
        command, spec = run.command, run.spec
        structlog.contextvars.bind_contextvars(attempt=run.attempts)
        cancelled = self.controls.cancellation(command.account, command.id)
        if cancelled is not None:
            reason = cancelled.get("reason") or "no reason given"
            error = PermanentError(f"cancelled by an operator: {reason}", code="cancelled", details=cancelled)
            await self._finish(delivery, run, error, attempts=run.attempts)
            return
        if await self._outside_window(delivery, run, state):
            return
        breaker = self.breakers.get(spec.vendor)
        if breaker is not None and not await breaker.admit():
            await self._release(command, state, waiting=True)
            await self._defer(delivery, command, max(1.0, breaker.remaining_cooldown()), "circuit_open")
            return
        if delivery.redeliveries >= self.settings.poison_redeliveries:
            poison = PermanentError(
                f"delivered {delivery.redeliveries} times without an outcome (workers stopped while running it)",
                code="poison_message",
            )
            ending = poison if spec.safe_to_repeat or state is not None else self._outcome_unknown(None)
            await self._finish(delivery, run, ending, attempts=run.attempts)
            return
        ctx = self._context(run, first_at, state)
        timer = time.perf_counter()
        run.called = True
        outcome = await self._call(spec, command.payload, ctx)
        HANDLER_DURATION.labels(command.type).observe(time.perf_counter() - timer)
        self._feed_breaker(breaker, outcome)
        if isinstance(outcome, TransientError):
            if self.on_transient is not None:
                self.on_transient(spec.vendor)
            await self._after_transient(delivery, run, outcome, first_at, state)
        elif isinstance(outcome, Continue):
            await self._continue(delivery, run, outcome)
        else:
            await self._finish(delivery, run, outcome, attempts=run.attempts)

    async def _outside_window(self, delivery: Delivery, run: _Run, state: dict[str, Any] | None) -> bool:
        """Quiet hours: outside the account's window, wait for its opening."""
        command, spec = run.command, run.spec
        window = self.windows.get((spec.vendor, command.account))
        if window is None or spec.recipient is None:
            return False
        now = self.clock()
        opening = window.next_opening(spec.recipient(command.payload), now)
        if opening is None:
            return False
        await self._release(command, state, waiting=True)
        await self._publish_interim(
            run,
            "deferred",
            {"reason": "quiet_hours", "until": opening.isoformat(), "time_zone": str(opening.tzinfo)},
        )
        log.info("outside the sending window; deferred", until=opening.isoformat())
        await self._defer(delivery, command, opening.timestamp() - now, "quiet_hours")
        return True

    async def _call(
        self, spec: CommandSpec, payload: dict[str, Any], ctx: CommandContext[Any]
    ) -> dict[str, Any] | Continue | SwitchboardError:
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the call in one more task per command.
            async with asyncio.timeout(self.settings.handler_timeout_seconds) as timeout:
                token = deadline.current.set(timeout)  # handlers may extend it for sized work (uploads)
                try:
                    return await spec.handler(payload, ctx)
                finally:
                    deadline.current.reset(token)
        except SwitchboardError as exc:
            return exc
        except TimeoutError:
            return VendorUnavailable(
                f"handler did not finish within {self.settings.handler_timeout_seconds}s",
                code="handler_timeout",
                maybe_applied=True,
            )
        except Exception as exc:
            log.exception("handler raised an unexpected error")
            return PermanentError(
                f"internal error in the handler: {exc.__class__.__name__}", code="internal_error"
            )

    @staticmethod
    def _feed_breaker(breaker: CircuitBreaker | None, outcome: object) -> None:
        if breaker is None:
            return
        if isinstance(outcome, VendorUnavailable | RateLimited):
            breaker.record_failure()
        elif not isinstance(outcome, TransientError):
            breaker.record_success()

    async def _after_transient(
        self,
        delivery: Delivery,
        run: _Run,
        error: TransientError,
        first_at: float,
        state: dict[str, Any] | None,
    ) -> None:
        command, spec = run.command, run.spec
        policy = self.settings.policy
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
            age_seconds=time.time() - first_at,
            safe_to_repeat=spec.safe_to_repeat or state is not None,
            policy=policy,
            rng=self.rng,
        )
        if isinstance(decision, Retry):
            RETRIES.labels(command.type, error.code).inc()
            if tracing.state.enabled:
                tracing.record_outcome(trace.get_current_span(), "retry", error.code)
            log.info(
                "transient error; retrying later",
                code=error.code,
                error=error.message,
                delay_seconds=round(decision.delay_seconds, 2),
            )
            await self._release(command, state)
            await self._send_back(delivery, command, decision.delay_seconds, "retry", attempts=run.attempts)
            return
        await self._finish(delivery, run, decision, attempts=run.attempts)

    async def _continue(self, delivery: Delivery, run: _Run, step: Continue) -> None:
        command = run.command
        await self._release(command, step.state, waiting=True)
        if step.progress is not None:
            await self._publish_interim(run, "progress", step.progress)
        await self._send_back(delivery, command, step.after_seconds, "continuation", attempts=run.attempts)

    async def _publish_interim(self, run: _Run, status: str, result: dict[str, Any]) -> None:
        """A non-terminal event (``progress``, ``deferred``): published, never stored."""
        command = run.command
        event = self._event(
            command.id,
            command.type,
            command.account,
            command.meta,
            status,
            run.attempts,
            run.started,
            result=result,
        )
        await self.outbox.event(
            events.encode(event),
            routing_key=events.routing_key(event),
            event_id=event["event_id"],
            command_id=command.id,
            headers=None if tracing.state.enabled else tracing.passthrough(command.headers, command.meta),
        )
        PROGRESS_EVENTS.labels(command.type, status).inc()

    async def _defer(self, delivery: Delivery, command: Command, seconds: float, reason: str) -> None:
        """Back through a delay queue without counting an attempt."""
        DEFERRALS.labels(command.type, reason).inc()
        attempts = command.headers.get(H_ATTEMPT, 0)
        await self._send_back(
            delivery, command, seconds, reason, attempts=attempts if isinstance(attempts, int) else 0
        )

    async def _send_back(
        self, delivery: Delivery, command: Command, seconds: float, reason: str, *, attempts: int
    ) -> None:
        first_seen = command.headers.get(H_FIRST_SEEN, int(time.time() * 1000))
        headers: dict[str, Any] = {H_ATTEMPT: attempts, H_FIRST_SEEN: first_seen, H_REASON: reason}
        if tracing.state.enabled and "traceparent" not in command.headers:
            # The publisher sent no trace: later attempts join this one's trace.
            tracing.inject(headers)
        await self.outbox.delay(
            delivery.body,
            delivery.properties,
            routing_key=command.type,
            seconds=seconds,
            headers=headers,
        )
        delivery.channel.ack(delivery.delivery_tag)

    # -- terminal outcomes ------------------------------------------------------
    async def _finish(
        self, delivery: Delivery, run: _Run, outcome: dict[str, Any] | SwitchboardError, *, attempts: int
    ) -> None:
        """Store, publish and ack the terminal event of a command we hold."""
        command = run.command
        if isinstance(outcome, SwitchboardError):
            status = "rejected" if isinstance(outcome, CommandRejected) else "failed"
            event = self._event(
                command.id,
                command.type,
                command.account,
                command.meta,
                status,
                attempts,
                run.started,
                error=outcome,
            )
        else:
            event = self._event(
                command.id,
                command.type,
                command.account,
                command.meta,
                "succeeded",
                attempts,
                run.started,
                result=outcome,
            )
        body = events.encode(event)
        if len(body) > self.settings.max_result_bytes and "result" in event:
            limit = self.settings.max_result_bytes
            event["result"] = results.bound(
                outcome if isinstance(outcome, dict) else {},
                lambda result: len(events.encode({**event, "result": result})),
                limit,
            )
            log.warning("result larger than max_result_bytes; truncated", size=len(body), limit=limit)
            body = events.encode(event)
        stored = await self._store_outcome(command, run.fingerprint, body)
        if stored is not body:
            event = orjson.loads(stored)
            body = stored
        await self._publish_terminal(delivery, event, body, self._reply_to(delivery))

    async def _release(
        self, command: Command, state: dict[str, Any] | None, *, waiting: bool = False
    ) -> None:
        """Give the claim back (a retry or continuation is scheduled); its lease is no longer renewed.

        Only this attempt's claim: if its lease lapsed and another worker took the command
        over, that worker's attempt stays running (a third one must not start it again).
        """
        lease = self._held.pop((command.account, command.id), None)
        await self.stores.idempotency.release(
            command.account,
            command.id,
            state,
            waiting=waiting,
            started=None if lease is None else lease.attempt_started_at,
        )

    async def _store_outcome(self, command: Command, fp: str, body: bytes) -> bytes:
        """Store the terminal event, retrying briefly: the vendor already acted.

        The lease stays renewed until the event is stored: a slow or retried store
        call must not let another worker take the command over meanwhile.
        """
        key = (command.account, command.id)
        self._settling.add(key)
        try:
            for attempt in range(5):
                try:
                    return await self.stores.idempotency.complete(
                        command.account, command.id, fp, body, time.time()
                    )
                except Exception:
                    if attempt == 4:
                        raise
                    log.warning("store unavailable while recording an outcome; retrying", exc_info=True)
                    await asyncio.sleep(0.2 * 2**attempt)
            raise AssertionError("unreachable")
        finally:
            self._settling.discard(key)
            self._held.pop(key, None)  # done: nothing left to renew

    def _event(
        self,
        command_id: str | None,
        command_type: str,
        account: str,
        meta: dict[str, Any],
        status: str,
        attempts: int,
        started: float,
        *,
        result: dict[str, Any] | None = None,
        error: SwitchboardError | None = None,
    ) -> dict[str, Any]:
        return events.build(
            command_id=command_id,
            type=command_type,
            account=account,
            status=status,
            attempts=attempts,
            duration_ms=(time.monotonic() - started) * 1000,
            meta=meta,
            result=result,
            error=None if error is None else error.as_event_error(),
        )

    async def _reject(self, delivery: Delivery, rejection: Rejection, started: float) -> None:
        """Rejections are not stored: the publisher may fix the message and send it again."""
        event = self._event(
            rejection.command_id,
            rejection.type,
            rejection.account,
            rejection.meta,
            "rejected",
            0,
            started,
            error=rejection.error,
        )
        await self._publish_terminal(delivery, event, events.encode(event), self._reply_to(delivery))

    async def _publish_stored(self, delivery: Delivery, command: Command, stored: bytes) -> None:
        event = orjson.loads(stored)
        log.info("already finished; publishing the stored event again", status=event["status"])
        publishing = [
            self.outbox.event(
                stored,
                routing_key=events.routing_key(event),
                event_id=event["event_id"],
                command_id=command.id,
                reply_to=self._reply_to(delivery),
                headers=self._trace_headers(delivery, event.get("meta")),
            )
        ]
        if event["status"] != "succeeded" and event.get("error") is not None:
            # The first settle may have died after storing the outcome but before its dead
            # letter was confirmed: copy it again. A second copy carries the same
            # x-switchboard-event-id, so it is recognisable as the same outcome.
            publishing.append(
                self.outbox.dead_letter(
                    delivery.body,
                    delivery.properties,
                    routing_key=delivery.routing_key,
                    status=event["status"],
                    error=event["error"],
                    event_id=event["event_id"],
                )
            )
        await asyncio.gather(*publishing)
        delivery.channel.ack(delivery.delivery_tag)

    def _reply_to(self, delivery: Delivery) -> str | None:
        """The command's ``reply_to`` when it may be published to; never a queue the envelope check refused."""
        reply_to: str | None = delivery.properties.reply_to
        return reply_to if reply_to_allowed(reply_to, self.settings.reply_to_allow) else None

    @staticmethod
    def _trace_headers(delivery: Delivery, meta: Any) -> dict[str, Any] | None:
        """Tracing off: the publisher's traceparent rides on the event (tracing on: the publish span injects it)."""
        if tracing.state.enabled:
            return None
        return tracing.passthrough(delivery.properties.headers, meta if isinstance(meta, dict) else None)

    async def _publish_terminal(
        self, delivery: Delivery, event: dict[str, Any], body: bytes, reply_to: str | None
    ) -> None:
        status, command_type = event["status"], event["type"]
        publishing = [
            self.outbox.event(
                body,
                routing_key=events.routing_key(event),
                event_id=event["event_id"],
                command_id=event["command_id"],
                reply_to=reply_to,
                headers=self._trace_headers(delivery, event.get("meta")),
            )
        ]
        error = event.get("error")
        if status != "succeeded" and error is not None:
            publishing.append(
                self.outbox.dead_letter(
                    delivery.body,
                    delivery.properties,
                    routing_key=delivery.routing_key,
                    status=status,
                    error=error,
                    event_id=event["event_id"],
                )
            )
            DEAD_LETTERS.labels(type_label(command_type, self.registry.commands), status).inc()
        if len(publishing) == 1:
            await publishing[0]  # the common case: no gather future to build
        else:
            await asyncio.gather(*publishing)
        delivery.channel.ack(delivery.delivery_tag)
        if tracing.state.enabled:
            tracing.record_outcome(trace.get_current_span(), status, None if error is None else error["code"])
        label = type_label(command_type, self.registry.commands)
        COMMANDS_FINISHED.labels(label, status).inc()
        if error is not None:
            COMMAND_ERRORS.labels(label, error["code"]).inc()
        log.info(
            "command finished",
            status=status,
            code=None if error is None else error["code"],
            attempts=event["attempts"],
            duration_ms=event["duration_ms"],
        )
