"""Carries out a delivery's decision; the only code that acks or nacks a command.

The delivery guarantee, step by step (:meth:`Executor.execute`):

==================  =======  =============================  ====================  ======
decision            store    publish, with confirms         dead letter           settle
==================  =======  =============================  ====================  ======
``Finish``          outcome  the terminal event (+reply_to)  when ``failed``       ack
``Reject``          -        ``rejected`` (+reply_to)        yes                   ack
``Republish``       -        the stored event again          when not succeeded    ack
``Retry``           release  the command to a delay queue    -                     ack
``Continue``        state    ``progress``, delay copy        -                     ack
``Defer``           release  (``deferred``), delay copy      -                     ack
an error            -        -                               -                     nack
==================  =======  =============================  ====================  ======

1. A terminal outcome is stored first (the first stored outcome wins; a
   redelivered copy finds it and republishes it instead of running again).
2. Then it is published, and its dead-letter copy too, and the broker
   confirms both.
3. Only then is the command acked: by the confirm of the last of them, as it
   is handled (:class:`AckOnConfirm`), not a loop turn later when the task
   awaiting the publishes wakes.

A crash between any two steps leaves the command unacked; its redelivery
finds the record and never calls the vendor twice. A publish the broker
refuses raises: the command is not acked but given back (nack, requeue) after
:data:`RETURN_AFTER_BROKER_ERROR_SECONDS` (:meth:`Executor.give_back`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from worker import events, results, tracing
from worker.amqp import AMQPError
from worker.clock import Clock
from worker.decisions import Continue, Decision, Defer, Finish, InFlight, Reject, Republish, Retry
from worker.envelope import Rejection, reply_to_allowed
from worker.errors import SwitchboardError
from worker.leases import Leases
from worker.metrics import type_label
from worker.observers import Hooks, Observer
from worker.outbox import H_ATTEMPT, H_FIRST_SEEN, H_REASON, Outbox
from worker.store import IdempotencyStore

if TYPE_CHECKING:
    from worker.dispatcher import Delivery

log = structlog.get_logger("switchboard.dispatcher")

RETURN_AFTER_BROKER_ERROR_SECONDS = 1.0
"""Pause before giving back a command whose settling the broker refused (see :meth:`Executor.give_back`)."""

STORE_ATTEMPTS = 5
"""Tries to store a terminal outcome (the vendor already acted) before giving the command back."""


class AckOnConfirm:
    """Acks a delivery when the broker has confirmed each of its ``publishes``.

    Called from the publish channel's confirm handling (``then=`` of
    :meth:`worker.amqp.Channel.publish`), so the ack leaves with that confirm
    frame instead of a loop turn later, when the task awaiting the publishes
    wakes: a command is held that much less, and the broker's prefetch window
    refills sooner. A publish that fails never calls it, so a command with one
    failed publish is never acked here (the awaiting task gives it back).
    """

    __slots__ = ("channel", "delivery_tag", "waiting")

    def __init__(self, delivery: Delivery, publishes: int) -> None:
        self.channel = delivery.channel
        self.delivery_tag = delivery.delivery_tag
        self.waiting = publishes

    def __call__(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.channel.ack(self.delivery_tag)


class Executor:
    def __init__(
        self,
        store: IdempotencyStore,
        outbox: Outbox,
        leases: Leases,
        observers: tuple[Observer, ...],
        clock: Clock,
        *,
        types: Collection[str],
        max_result_bytes: int,
        reply_to_allow: Collection[str] = (),
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.leases = leases
        self.hooks = Hooks(observers)
        self.clock = clock
        self.types = types
        self.max_result_bytes = max_result_bytes
        self.reply_to_allow = reply_to_allow

    @property
    def observers(self) -> tuple[Observer, ...]:
        return self.hooks.observers

    @observers.setter
    def observers(self, observers: tuple[Observer, ...]) -> None:
        self.hooks = Hooks(observers)

    async def execute(
        self, delivery: Delivery, started: float, decision: Decision, run: InFlight | None
    ) -> None:
        """Carry ``decision`` out in the documented order; raises when the broker or store fails (nothing acked)."""
        if isinstance(decision, Reject):
            await self._reject(delivery, started, decision.rejection)
            return
        assert run is not None, "only a rejection can come before the command is read"
        if isinstance(decision, Finish):
            await self._finish(delivery, run, decision.outcome)
        elif isinstance(decision, Retry):
            await self._retry(delivery, run, decision)
        elif isinstance(decision, Continue):
            await self._continue(delivery, run, decision)
        elif isinstance(decision, Defer):
            await self._defer(delivery, run, decision)
        else:
            await self._republish(delivery, run, decision)

    async def give_back(self, delivery: Delivery, error: Exception) -> None:
        """Return a command whose decision could not be carried out (nack, requeue): it is redelivered,
        and the store says what already happened."""
        if isinstance(error, AMQPError):
            log.warning("broker lost while settling; the command will be redelivered", error=str(error))
            # A closed channel gives it back by itself. An open one (the broker only refused the
            # publish: a quorum queue electing a leader nacks for a moment) would hold it unacked
            # until the connection closes, so give it back, after a pause so a broker that keeps
            # refusing is not asked again in a tight loop (each return counts a delivery).
            await asyncio.sleep(RETURN_AFTER_BROKER_ERROR_SECONDS)
        else:
            # A bug, not bad input: give it back; the queue's delivery limit
            # dead-letters it if it keeps failing, instead of it staying unacked.
            log.error("unexpected error while settling a command; returning it to the queue", exc_info=error)
        delivery.channel.nack(delivery.delivery_tag, requeue=True)

    # -- terminal ---------------------------------------------------------------
    async def _finish(
        self, delivery: Delivery, run: InFlight, outcome: dict[str, Any] | SwitchboardError
    ) -> None:
        """Store, publish and ack the terminal event of a command this worker holds."""
        command = run.command
        failed = isinstance(outcome, SwitchboardError)
        event = events.build(
            command_id=command.id,
            type=command.type,
            account=command.account,
            status="failed" if failed else "succeeded",
            attempts=run.attempts,
            occurred_at=self.clock.time(),
            duration_ms=(self.clock.monotonic() - run.started) * 1000,
            meta=command.meta,
            result=None if isinstance(outcome, SwitchboardError) else outcome,
            error=outcome.as_event_error() if isinstance(outcome, SwitchboardError) else None,
        )
        body = events.encode(event)
        if len(body) > self.max_result_bytes and "result" in event:
            limit = self.max_result_bytes
            event["result"] = results.bound(
                event["result"], lambda result: len(events.encode({**event, "result": result})), limit
            )
            log.warning("result larger than max_result_bytes; truncated", size=len(body), limit=limit)
            body = events.encode(event)
        stored = await self._store_outcome(run, body)
        if stored is not body:  # another worker's outcome won the race: that one is the outcome
            event = orjson.loads(stored)
            body = stored
        await self._publish_terminal(delivery, run.started, event, body)

    async def _reject(self, delivery: Delivery, started: float, rejection: Rejection) -> None:
        """Rejections are not stored: the publisher may fix the message and send it again."""
        event = events.build(
            command_id=rejection.command_id,
            type=rejection.type,
            account=rejection.account,
            status="rejected",
            attempts=0,
            occurred_at=self.clock.time(),
            duration_ms=(self.clock.monotonic() - started) * 1000,
            meta=rejection.meta,
            error=rejection.error.as_event_error(),
        )
        await self._publish_terminal(delivery, started, event, events.encode(event))

    async def _publish_terminal(
        self, delivery: Delivery, started: float, event: dict[str, Any], body: bytes
    ) -> None:
        status = event["status"]
        error = event.get("error")
        dead = status != "succeeded" and error is not None
        reply_to = self._reply_to(delivery)
        acked = AckOnConfirm(delivery, 1 + bool(reply_to) + dead)
        publishing = self.outbox.event(
            body,
            routing_key=events.routing_key(event),
            event_id=event["event_id"],
            command_id=event["command_id"],
            reply_to=reply_to,
            headers=self._trace_headers(delivery, event.get("meta")),
            then=acked,
        )
        if dead:
            await asyncio.gather(publishing, self._dead_letter(delivery, event, acked))
        else:
            await publishing  # the common case: no gather future to build
        # Acked by now: by the last confirm (AckOnConfirm).
        label = type_label(event["type"], self.types)
        code = None if error is None else error["code"]
        for finished in self.hooks.finished:
            finished(label, status, code, event["attempts"], event["duration_ms"], dead)

    async def _republish(self, delivery: Delivery, run: InFlight, decision: Republish) -> None:
        stored = decision.stored
        event = orjson.loads(stored)
        # The first settle may have died after storing the outcome but before its dead letter
        # was confirmed: copy it again. A second copy carries the same x-switchboard-event-id,
        # so it is recognisable as the same outcome.
        dead = event["status"] != "succeeded" and event.get("error") is not None
        reply_to = self._reply_to(delivery)
        acked = AckOnConfirm(delivery, 1 + bool(reply_to) + dead)
        publishing = self.outbox.event(
            stored,
            routing_key=events.routing_key(event),
            event_id=event["event_id"],
            command_id=run.command.id,
            reply_to=reply_to,
            headers=self._trace_headers(delivery, event.get("meta")),
            then=acked,
        )
        if dead:
            await asyncio.gather(publishing, self._dead_letter(delivery, event, acked))
        else:
            await publishing
        for duplicate in self.hooks.duplicate:
            duplicate(run.command.type, event["status"])

    def _dead_letter(self, delivery: Delivery, event: dict[str, Any], acked: AckOnConfirm) -> Any:
        return self.outbox.dead_letter(
            delivery.body,
            delivery.properties,
            routing_key=delivery.routing_key,
            status=event["status"],
            error=event["error"],
            event_id=event["event_id"],
            then=acked,
        )

    async def _store_outcome(self, run: InFlight, body: bytes) -> bytes:
        """Store the terminal event, retrying briefly: the vendor already acted.

        The lease stays renewed until the event is stored: a slow or retried store
        call must not let another worker take the command over meanwhile.
        """
        command = run.command
        key = run.key
        self.leases.settling.add(key)
        try:
            for attempt in range(STORE_ATTEMPTS):
                try:
                    return await self.store.complete(
                        command.account, command.id, run.fingerprint, body, self.clock.time()
                    )
                except Exception:
                    if attempt == STORE_ATTEMPTS - 1:
                        raise
                    log.warning("store unavailable while recording an outcome; retrying", exc_info=True)
                    await asyncio.sleep(0.2 * 2**attempt)
            raise AssertionError("unreachable")
        finally:
            self.leases.settling.discard(key)
            self.leases.drop(key, run.lease)  # done: nothing left to renew

    # -- not yet ----------------------------------------------------------------
    async def _retry(self, delivery: Delivery, run: InFlight, decision: Retry) -> None:
        await self.release(run, run.state)
        await self._send_back(delivery, run, decision.delay_seconds, "retry", run.attempts)
        if decision.error is not None:
            for retrying in self.hooks.retrying:
                retrying(run.command.type, decision.error, decision.delay_seconds)

    async def _continue(self, delivery: Delivery, run: InFlight, step: Continue) -> None:
        await self.release(run, step.state, waiting=True)
        if step.progress is not None:
            await self._interim(run, "progress", step.progress)
        await self._send_back(delivery, run, step.after_seconds, "continuation", run.attempts)

    async def _defer(self, delivery: Delivery, run: InFlight, decision: Defer) -> None:
        if run.lease is not None:
            await self.release(run, run.state, waiting=True)
        if decision.interim is not None:
            await self._interim(run, "deferred", decision.interim)
            log.info("deferred", reason=decision.reason, until=decision.interim.get("until"))
        attempts = run.command.headers.get(H_ATTEMPT, 0)
        await self._send_back(
            delivery, run, decision.seconds, decision.reason, attempts if isinstance(attempts, int) else 0
        )
        for deferred in self.hooks.deferred:
            deferred(run.command.type, decision.reason)

    async def release(self, run: InFlight, state: dict[str, Any] | None, *, waiting: bool = False) -> None:
        """Give the claim back (a retry or continuation is scheduled); its lease is no longer renewed.

        Only this attempt's claim: if its lease lapsed and another worker took the command
        over, that worker's attempt stays running (a third one must not start it again).
        """
        command = run.command
        self.leases.drop(run.key, run.lease)
        await self.store.release(
            command.account,
            command.id,
            state,
            waiting=waiting,
            started=None if run.lease is None else run.lease.attempt_started_at,
        )

    async def _interim(self, run: InFlight, status: str, result: dict[str, Any]) -> None:
        """A non-terminal event (``progress``, ``deferred``): published, never stored."""
        command = run.command
        event = events.build(
            command_id=command.id,
            type=command.type,
            account=command.account,
            status=status,
            attempts=run.attempts,
            occurred_at=self.clock.time(),
            duration_ms=(self.clock.monotonic() - run.started) * 1000,
            meta=command.meta,
            result=result,
        )
        await self.outbox.event(
            events.encode(event),
            routing_key=events.routing_key(event),
            event_id=event["event_id"],
            command_id=command.id,
            headers=None if tracing.state.enabled else tracing.passthrough(command.headers, command.meta),
        )
        for interim in self.hooks.interim:
            interim(command.type, status)

    async def _send_back(
        self, delivery: Delivery, run: InFlight, seconds: float, reason: str, attempts: int
    ) -> None:
        """The command to a delay queue (confirmed), then ack: it comes back after ``seconds``."""
        command = run.command
        first_seen = command.headers.get(H_FIRST_SEEN, int(self.clock.time() * 1000))
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
            then=AckOnConfirm(delivery, 1),
        )

    def _reply_to(self, delivery: Delivery) -> str | None:
        """The command's ``reply_to`` when it may be published to; never a queue the envelope check refused."""
        reply_to: str | None = delivery.properties.reply_to
        return reply_to if reply_to_allowed(reply_to, self.reply_to_allow) else None

    @staticmethod
    def _trace_headers(delivery: Delivery, meta: Any) -> dict[str, Any] | None:
        """Tracing off: the publisher's traceparent rides on the event (tracing on: the publish span injects it)."""
        if tracing.state.enabled:
            return None
        return tracing.passthrough(delivery.properties.headers, meta if isinstance(meta, dict) else None)
