"""The dispatcher's decisions, with an in-memory store and a recording outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pika
import pytest
from pydantic import BaseModel

from worker.breaker import CircuitBreaker
from worker.clock import ManualClock
from worker.controls import Controls
from worker.dispatcher import Delivery, Dispatcher, DispatchSettings
from worker.errors import OutcomeUnknown, RateLimited, VendorRejected, VendorUnavailable
from worker.quiet_hours import SendingWindow
from worker.registry import CommandContext, Commands, Continue, Registry, Vendor
from worker.retry import RetryPolicy
from worker.store import AsksAhead, ClaimStatus, RecipientAskedAhead, Stores
from worker.store.sqlite import SQLiteDeduper, SQLiteIdempotencyStore, SQLiteSuppressionList, connect


class FakeChannel:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.nacked: list[int] = []

    def ack(self, tag: int) -> bool:
        self.acked.append(tag)
        return True

    def nack(self, tag: int, *, requeue: bool) -> bool:
        self.nacked.append(tag)
        return True


class FakeOutbox:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.dead: list[dict[str, Any]] = []
        self.delayed: list[tuple[float, dict[str, Any]]] = []

    async def event(self, body: bytes, **kwargs: Any) -> None:
        self.events.append(orjson.loads(body))
        _confirmed(kwargs)

    async def dead_letter(self, body: bytes, original: Any, **kwargs: Any) -> None:
        self.dead.append(kwargs)
        _confirmed(kwargs)

    async def delay(self, body: bytes, original: Any, **kwargs: Any) -> None:
        self.delayed.append((kwargs["seconds"], kwargs["headers"]))
        _confirmed(kwargs)


def _confirmed(publish: dict[str, Any]) -> None:
    """The broker's confirm, as Channel.publish hands it on: ``then`` is called."""
    then = publish.get("then")
    if then is not None:
        then()


class Account(BaseModel):
    base_url: str = "http://vendor.invalid"


def _squeeze_number(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "to": str(payload.get("to", "")).replace(" ", "")}


Behaviour = Callable[[dict[str, Any], CommandContext[Any]], Awaitable[dict[str, Any] | Continue]]


class NoClient:
    """The handlers here call no vendor; the runtime only needs a client it can close."""

    async def close(self) -> None:
        pass


class Harness:
    def __init__(self, suppressions: type[SQLiteSuppressionList] = SQLiteSuppressionList) -> None:
        self.behaviour: Behaviour = self._ok
        self.calls = 0

        async def handler(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any] | Continue:
            self.calls += 1
            return await self.behaviour(payload, ctx)

        commands = Commands()
        for name, safe in (("echo", True), ("charge", False)):
            commands.command(name, safe_to_repeat=safe, schema="command", recipient=lambda p: p.get("to"))(
                handler
            )
        self.received: list[dict[str, Any]] = []

        async def text(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any] | Continue:
            self.received.append(payload)
            return await handler(payload, ctx)

        # A type whose check normalises: "+1 212 555 0123" and "+12125550123" are one number.
        commands.command("text", safe_to_repeat=False, schema="command", check=_squeeze_number)(text)
        self.registry = Registry(
            [
                Vendor(
                    name="acme", account_model=Account, make_client=lambda a, h: NoClient(), commands=commands
                )
            ]
        )
        conn = connect(":memory:")
        self.store = SQLiteIdempotencyStore(conn, 3600)
        self.suppressions = suppressions(conn)
        stores = Stores(self.store, self.suppressions, SQLiteDeduper(conn), "sqlite")
        self.outbox = FakeOutbox()
        self.channel = FakeChannel()
        self.controls = Controls(None)
        self.clock = ManualClock()
        self.breakers: dict[str, CircuitBreaker] = {}
        self.windows: dict[tuple[str, str], SendingWindow] = {}
        self.dispatcher = Dispatcher(
            self.registry,
            {("acme", "default"): NoClient()},
            stores,
            self.outbox,  # type: ignore[arg-type]
            self.breakers,
            DispatchSettings(
                max_message_bytes=4096,
                lease_seconds=60,
                handler_timeout_seconds=5,
                defer_seconds=3,
                poison_redeliveries=5,
                policy=RetryPolicy(max_attempts=3, base_seconds=0.1),
            ),
            controls=self.controls,
            windows=self.windows,
            clock=self.clock,
        )
        # The payload schema of the fake commands is the envelope schema; give them a permissive one.
        from worker.validation import SchemaValidator

        for name in ("echo", "charge", "text"):
            self.dispatcher.validators.payloads[name] = SchemaValidator({"type": "object"}, prefix="/payload")

    @property
    def now(self) -> float:
        """The dispatcher's clock (claims, ages, retries, sending windows)."""
        return self.clock.now

    @now.setter
    def now(self, value: float) -> None:
        self.clock.now = value

    @staticmethod
    async def _ok(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        return {"ok": True}

    async def deliver(
        self,
        command_type: str,
        command_id: str = "c-1",
        payload: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        body = orjson.dumps({"id": command_id, "type": command_type, "payload": payload or {"n": 1}})
        properties = pika.BasicProperties(
            content_type="application/json", message_id=command_id, headers=headers
        )
        await self.dispatcher.handle(Delivery(self.channel, 1, command_type, properties, body))  # type: ignore[arg-type]

    def statuses(self) -> list[str]:
        return [e["status"] for e in self.outbox.events]


@pytest.fixture
def h() -> Harness:
    return Harness()


async def test_success_is_stored_published_and_acked(h: Harness) -> None:
    """A handler result becomes one succeeded event, stored, then acked."""
    await h.deliver("echo")
    assert h.statuses() == ["succeeded"]
    assert h.outbox.events[0]["result"] == {"ok": True}
    assert h.channel.acked == [1]
    claim = await h.store.claim("default", "c-1", "x", time.time(), 60)
    assert claim.status in (ClaimStatus.DONE, ClaimStatus.CONFLICT)


async def test_duplicate_republishes_the_stored_event(h: Harness) -> None:
    """The same command again does not run the handler; the same event_id is published."""
    await h.deliver("echo")
    await h.deliver("echo")
    assert h.calls == 1
    assert h.outbox.events[0]["event_id"] == h.outbox.events[1]["event_id"]


async def test_conflicting_payload_is_rejected(h: Harness) -> None:
    """The same id with another payload is rejected with idempotency_conflict."""
    await h.deliver("echo", payload={"n": 1})
    await h.deliver("echo", payload={"n": 2})
    assert h.outbox.events[1]["error"]["code"] == "idempotency_conflict"
    assert h.calls == 1


async def test_live_claim_elsewhere_defers(h: Harness) -> None:
    """A command another worker is running is sent back through a delay queue, not run."""
    from worker.dispatcher import fingerprint

    await h.store.claim("default", "c-1", fingerprint("echo", {"n": 1}), time.time(), 60)
    await h.deliver("echo")
    assert h.calls == 0
    assert h.outbox.events == []
    assert h.outbox.delayed[0][1]["x-switchboard-delay-reason"] == "claimed_elsewhere"
    assert h.channel.acked == [1]


async def test_expired_claim_of_unsafe_command_is_outcome_unknown(h: Harness) -> None:
    """An unsafe command whose earlier attempt died mid-call is not run again."""
    from worker.dispatcher import fingerprint

    await h.store.claim("default", "c-1", fingerprint("charge", {"n": 1}), time.time() - 120, 60)
    await h.deliver("charge")
    assert h.calls == 0
    assert h.outbox.events[0]["error"]["code"] == "outcome_unknown"
    assert "previous_attempt_started_at" in h.outbox.events[0]["error"]["details"]


async def test_expired_claim_of_safe_command_runs_again(h: Harness) -> None:
    """A safe command whose earlier attempt died is taken over and run."""
    from worker.dispatcher import fingerprint

    await h.store.claim("default", "c-1", fingerprint("echo", {"n": 1}), time.time() - 120, 60)
    await h.deliver("echo")
    assert h.calls == 1
    assert h.statuses() == ["succeeded"]
    assert h.outbox.events[0]["attempts"] == 2


async def test_transient_error_is_retried_through_a_delay_queue(h: Harness) -> None:
    """A transient error releases the claim and sends the command back; no event yet."""

    async def flaky(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise RateLimited("slow down", retry_after=7)

    h.behaviour = flaky
    await h.deliver("charge")
    assert h.outbox.events == []
    seconds, headers = h.outbox.delayed[0]
    assert seconds >= 7
    assert headers["x-switchboard-delay-reason"] == "retry"
    h.behaviour = h._ok
    await h.deliver("charge")
    assert h.outbox.events[0]["attempts"] == 2


async def test_maybe_applied_error_on_unsafe_command_is_outcome_unknown(h: Harness) -> None:
    """A timeout after sending ends an unsafe command with outcome_unknown, carrying the cause."""

    async def timeout(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise VendorUnavailable("no answer", code="vendor_timeout", maybe_applied=True)

    h.behaviour = timeout
    await h.deliver("charge")
    event = h.outbox.events[0]
    assert event["error"]["code"] == OutcomeUnknown.code
    assert event["error"]["details"]["cause"]["code"] == "vendor_timeout"
    assert len(h.outbox.dead) == 1


async def test_a_handler_past_its_timeout_ends_as_a_handler_timeout(h: Harness) -> None:
    """The dispatcher's deadline ends a handler that never returns; unsafe, the command is outcome_unknown."""
    h.dispatcher.settings = dataclasses.replace(h.dispatcher.settings, handler_timeout_seconds=0.05)

    async def hangs(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        await asyncio.Event().wait()  # never set
        raise AssertionError("unreachable")

    h.behaviour = hangs
    await asyncio.wait_for(h.deliver("charge"), 10)
    event = h.outbox.events[0]
    assert event["error"]["code"] == OutcomeUnknown.code
    assert event["error"]["details"]["cause"]["code"] == "handler_timeout"
    assert h.channel.acked == [1]
    assert h.dispatcher.deadlines.running == set()


async def test_gives_up_after_max_attempts(h: Harness) -> None:
    """After max attempts the command fails with the last error and gave_up."""

    async def down(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise VendorUnavailable("down")

    h.behaviour = down
    for _ in range(3):
        await h.deliver("echo")
    assert h.statuses() == ["failed"]
    assert h.outbox.events[0]["attempts"] == 3
    assert h.outbox.events[0]["error"]["details"]["gave_up"] is True


async def test_permanent_error_fails_and_is_dead_lettered(h: Harness) -> None:
    """A vendor refusal ends the command failed, kept in the dead-letter queue."""

    async def refuse(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise VendorRejected("no such group")

    h.behaviour = refuse
    await h.deliver("echo")
    assert h.statuses() == ["failed"]
    assert h.outbox.dead[0]["status"] == "failed"


async def test_continuation_publishes_progress_and_resumes_with_state(h: Harness) -> None:
    """A Continue answer publishes progress, waits in a delay queue, and the next call sees the state."""
    seen: list[dict[str, Any] | None] = []

    async def poll(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any] | Continue:
        seen.append(ctx.state)
        if ctx.state is None:
            return Continue(state={"token": "t"}, after_seconds=30, progress={"state": "PENDING"})
        return {"done": ctx.state["token"]}

    h.behaviour = poll
    await h.deliver("charge")
    await h.deliver("charge")
    assert seen == [None, {"token": "t"}]
    assert h.statuses() == ["progress", "succeeded"]
    assert h.outbox.events[1]["attempts"] == 1
    assert h.outbox.delayed[0][0] == 30


async def test_continuation_step_taken_over_after_a_crash_is_marked_resumed(h: Harness) -> None:
    """A step whose worker died mid-step runs again with ctx.resumed (so an unsafe step can refuse to repeat)."""
    from worker.dispatcher import fingerprint

    seen: list[tuple[dict[str, Any] | None, bool]] = []

    async def step(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any] | Continue:
        seen.append((ctx.state, ctx.resumed))
        if ctx.state is None:
            return Continue(state={"token": "t"}, after_seconds=30)
        return {"done": ctx.state["token"]}

    h.behaviour = step
    await h.deliver("charge")
    # The continuation is claimed by a worker that then dies: its lease is long expired.
    await h.store.claim("default", "c-1", fingerprint("charge", {"n": 1}), time.time() - 120, 60)
    await h.deliver("charge")
    assert seen == [(None, False), ({"token": "t"}, True)]
    assert h.statuses() == ["succeeded"]


async def test_poison_message_is_failed_without_running(h: Harness) -> None:
    """A message redelivered past the limit is ended instead of crashing workers again."""
    await h.deliver("echo", headers={"x-delivery-count": 9})
    assert h.calls == 0
    assert h.outbox.events[0]["error"]["code"] == "poison_message"


async def test_unexpected_handler_exception_is_an_internal_error(h: Harness) -> None:
    """A bug in a handler ends the command failed with internal_error; the worker goes on."""

    async def bug(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise KeyError("oops")

    h.behaviour = bug
    await h.deliver("echo")
    assert h.outbox.events[0]["error"]["code"] == "internal_error"
    assert h.channel.acked == [1]


async def test_paused_account_is_deferred_not_run(h: Harness) -> None:
    """A paused account's command waits in a delay queue: not run, not failed, acked."""
    h.controls.load({"pause:default:*": {}})
    await h.deliver("echo")
    assert h.calls == 0
    assert h.outbox.events == []
    assert h.outbox.delayed[0][1]["x-switchboard-delay-reason"] == "paused"
    h.controls.load({})
    await h.deliver("echo")
    assert h.statuses() == ["succeeded"]


async def test_pause_by_type_leaves_other_types_alone(h: Harness) -> None:
    """Pausing one type does not hold back another."""
    h.controls.load({"pause:default:charge": {}})
    await h.deliver("echo")
    await h.deliver("charge", command_id="c-2")
    assert h.statuses() == ["succeeded"]
    assert h.calls == 1


async def test_cancelled_command_fails_without_running(h: Harness) -> None:
    """A cancelled command ends failed/cancelled when its turn comes; the vendor is not called."""
    h.controls.load({"cancel:default:c-1": {"reason": "wrong list"}})
    await h.deliver("charge")
    assert h.calls == 0
    event = h.outbox.events[0]
    assert (event["status"], event["error"]["code"]) == ("failed", "cancelled")
    assert "wrong list" in event["error"]["message"]


async def test_cancel_reaches_a_command_waiting_for_retry(h: Harness) -> None:
    """A command cancelled while it waits for a retry ends cancelled on its next delivery."""

    async def down(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise VendorUnavailable("down")

    h.behaviour = down
    await h.deliver("echo")
    h.controls.load({"cancel:default:c-1": {"reason": ""}})
    await h.deliver("echo")
    assert h.calls == 1
    assert h.outbox.events[0]["error"]["code"] == "cancelled"


def _at(hour: int, zone: str) -> float:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime(2026, 11, 25, hour, 30, tzinfo=ZoneInfo(zone)).timestamp()


async def test_quiet_hours_defer_until_the_window_opens(h: Harness) -> None:
    """Outside the window (recipient's local time) the command waits for the opening, with a deferred event."""
    h.windows[("acme", "default")] = SendingWindow.parse("08:00-21:00", "America/New_York")
    h.now = _at(22, "America/New_York")
    await h.deliver("charge", payload={"to": "+12125550123"})
    assert h.calls == 0
    deferred = h.outbox.events[0]
    assert deferred["status"] == "deferred"
    assert deferred["result"]["reason"] == "quiet_hours"
    assert deferred["result"]["until"].startswith("2026-11-26T08:00")
    seconds, headers = h.outbox.delayed[0]
    assert seconds == pytest.approx(9.5 * 3600)
    assert headers["x-switchboard-delay-reason"] == "quiet_hours"
    h.now = _at(9, "America/New_York") + 86400
    await h.deliver("charge", payload={"to": "+12125550123"})
    assert h.statuses() == ["deferred", "succeeded"]
    assert h.outbox.events[1]["attempts"] == 1


async def test_quiet_hours_use_the_recipients_zone(h: Harness) -> None:
    """A London number at 10:00 London time is sent even when it is 05:00 in the account's zone."""
    h.windows[("acme", "default")] = SendingWindow.parse("08:00-21:00", "America/New_York")
    h.now = _at(10, "Europe/London")
    await h.deliver("charge", payload={"to": "+442079460000"})
    assert h.statuses() == ["succeeded"]


async def test_expired_lease_renewed_by_a_late_holder_is_not_ended(h: Harness) -> None:
    """A lapsed lease its holder renews before the take-over is left running: no outcome_unknown."""
    from worker.dispatcher import fingerprint
    from worker.store import Lease

    started = time.time() - 120
    await h.store.claim("default", "c-1", fingerprint("charge", {"n": 1}), started, 60)
    real_claim = h.store.claim

    async def claim_then_holder_renews(*args: Any, **kwargs: Any) -> Any:
        claim = await real_claim(*args, **kwargs)
        assert claim.status is ClaimStatus.EXPIRED
        # The holder was only late (a stalled loop): its renewal lands now.
        await h.store.renew([Lease("default", "c-1", started)], time.time(), 60)
        return claim

    h.store.claim = claim_then_holder_renews  # type: ignore[method-assign]
    await h.deliver("charge")
    assert h.outbox.events == [], "a command still running was ended outcome_unknown"
    assert h.outbox.delayed[0][1]["x-switchboard-delay-reason"] == "claimed_elsewhere"


async def test_copy_claimed_in_the_same_worker_keeps_its_lease_renewed(h: Harness) -> None:
    """A doubled publish claimed here while the first copy is still being sent back keeps its lease in the renewal set."""
    import asyncio

    running = asyncio.Event()
    finish = asyncio.Event()
    first = True

    async def flaky_then_slow(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            raise RateLimited("slow down", retry_after=1)
        running.set()
        await finish.wait()
        return {"ok": True}

    h.behaviour = flaky_then_slow
    second: list[asyncio.Task[None]] = []
    send_back = h.outbox.delay

    async def delay_while_the_copy_starts(body: bytes, original: Any, **kwargs: Any) -> None:
        await send_back(body, original, **kwargs)
        if not second:  # the copy arrives while the first delivery is still settling its retry
            second.append(asyncio.create_task(h.deliver("charge")))
            await running.wait()

    h.outbox.delay = delay_while_the_copy_starts  # type: ignore[method-assign]
    await h.deliver("charge")
    try:
        assert ("default", "c-1") in h.dispatcher.leases.held, (
            "the running copy's lease would no longer be renewed"
        )
    finally:
        finish.set()
        await second[0]
    assert h.statuses() == ["succeeded"]


async def test_store_error_before_the_vendor_call_gives_the_claim_back(h: Harness) -> None:
    """An error before the call releases the claim: the redelivery runs the unsafe command, not outcome_unknown."""

    class FailingBreaker:
        async def admit(self) -> bool:
            raise ConnectionError("store unavailable")

    h.breakers["acme"] = FailingBreaker()  # type: ignore[assignment]
    await h.deliver("charge")
    assert h.channel.nacked == [1]
    assert h.calls == 0
    del h.breakers["acme"]
    await h.deliver("charge")
    assert h.calls == 1
    assert h.statuses() == ["succeeded"]


async def test_lease_is_renewed_while_the_outcome_is_being_stored(h: Harness) -> None:
    """A slow store call recording the outcome does not stop the renewals (the command cannot be taken over then)."""
    import asyncio
    import dataclasses

    h.dispatcher.settings = dataclasses.replace(h.dispatcher.settings, live_lease_seconds=0.3)
    renewed_while_storing = asyncio.Event()
    storing = False
    real_renew, real_complete = h.store.renew, h.store.complete

    async def renew(leases: Any, now: float, seconds: float) -> list[bool]:
        if storing and any(lease.command_id == "c-1" for lease in leases):
            renewed_while_storing.set()
        return await real_renew(leases, now, seconds)

    async def slow_complete(*args: Any) -> bytes:
        nonlocal storing
        storing = True
        await asyncio.wait_for(renewed_while_storing.wait(), 5)  # a renewal round runs every 0.1 s
        return await real_complete(*args)

    h.store.renew = renew  # type: ignore[method-assign]
    h.store.complete = slow_complete  # type: ignore[method-assign]
    renewing = asyncio.create_task(h.dispatcher.renew_leases())
    try:
        await h.deliver("charge")
    finally:
        renewing.cancel()
    assert h.statuses() == ["succeeded"], "the lease was dropped before the outcome was stored"


async def test_a_refused_send_back_returns_the_command_to_the_queue(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry the broker nacks is given back (nack, requeue) on the open channel, not held unacked."""
    from worker import executor
    from worker.amqp import PublishNacked

    monkeypatch.setattr(executor, "RETURN_AFTER_BROKER_ERROR_SECONDS", 0.0)

    async def refused(body: bytes, original: Any, **kwargs: Any) -> None:
        raise PublishNacked("broker nacked the message")

    async def rate_limited(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise RateLimited("acme: rate limited (HTTP 429)", retry_after=1.0)

    h.behaviour = rate_limited
    h.outbox.delay = refused  # type: ignore[method-assign]
    await h.deliver("echo")
    assert h.channel.acked == []
    assert h.channel.nacked == [1]
    assert h.outbox.events == []


async def test_the_handler_gets_the_checked_payload_and_the_fingerprint_is_the_published_one(
    h: Harness,
) -> None:
    """check's normalised payload reaches the handler; the record is keyed on the payload as published."""
    from worker.dispatcher import fingerprint

    await h.deliver("text", payload={"to": "+1 212 555 0123"})
    assert h.received == [{"to": "+12125550123"}]
    claim = await h.store.claim("default", "c-1", fingerprint("text", {"to": "+1 212 555 0123"}), h.now, 60)
    assert claim.status is ClaimStatus.DONE


async def test_same_id_with_a_payload_that_only_normalises_equal_is_a_conflict(h: Harness) -> None:
    """One id, one published payload: a different spelling of the same number is idempotency_conflict, not a duplicate."""
    await h.deliver("text", payload={"to": "+1 212 555 0123"})
    await h.deliver("text", payload={"to": "+12125550123"})
    assert h.statuses() == ["succeeded", "rejected"]
    assert h.outbox.events[1]["error"]["code"] == "idempotency_conflict"
    await h.deliver("text", payload={"to": "+1 212 555 0123"})
    assert h.outbox.events[2]["event_id"] == h.outbox.events[0]["event_id"], "the same payload is a duplicate"
    assert len(h.received) == 1


async def test_the_command_is_frozen(h: Harness) -> None:
    """Nothing downstream can rewrite the command it was fingerprinted from."""
    import dataclasses

    from worker.envelope import Command

    command = Command("c", "echo", {}, "default", {}, None, b"", pika.BasicProperties(), "echo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.payload = {"n": 2}  # type: ignore[misc]


async def test_invalid_payload_raised_by_a_handler_is_a_stored_failure_not_a_rejection(h: Harness) -> None:
    """A handler cannot reject: InvalidPayload after the claim ends failed (code and path kept), stored and dead-lettered."""
    from worker.errors import InvalidPayload

    async def picky(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise InvalidPayload("the vendor says this number is a landline", path="/payload/to")

    h.behaviour = picky
    await h.deliver("echo")
    event = h.outbox.events[0]
    assert (event["status"], event["error"]["code"]) == ("failed", "invalid_payload")
    assert event["error"]["details"]["path"] == "/payload/to"
    assert h.outbox.dead[0]["status"] == "failed"
    await h.deliver("echo")
    assert h.calls == 1, "a stored outcome: the redelivery does not run the handler again"
    assert h.outbox.events[1]["event_id"] == event["event_id"]


async def test_ages_follow_the_injected_clock(h: Harness) -> None:
    """A retry past max age gives up by the dispatcher's clock, with no sleeping."""

    async def down(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        raise VendorUnavailable("down")

    import dataclasses

    h.behaviour = down
    policy = RetryPolicy(max_attempts=3, base_seconds=0.1, max_age_seconds=600)
    h.dispatcher.settings = dataclasses.replace(h.dispatcher.settings, policy=policy)
    await h.deliver("echo")
    assert h.outbox.delayed[0][1]["x-switchboard-delay-reason"] == "retry"
    assert h.outbox.delayed[0][1]["x-switchboard-first-seen"] == int(h.now * 1000)
    h.now += 601
    await h.deliver("echo")
    event = h.outbox.events[0]
    assert event["status"] == "failed"
    assert "older than" in event["error"]["message"]


async def test_claims_follow_the_injected_clock(h: Harness) -> None:
    """A lease is live or lapsed by the dispatcher's clock: moved past it, an unsafe command ends outcome_unknown."""
    from worker.dispatcher import fingerprint

    await h.store.claim("default", "c-1", fingerprint("charge", {"n": 1}), h.now, 60)
    await h.deliver("charge")
    assert h.outbox.delayed[0][1]["x-switchboard-delay-reason"] == "claimed_elsewhere"
    h.now += 61
    await h.deliver("charge")
    assert h.outbox.events[0]["error"]["code"] == "outcome_unknown"
    assert h.calls == 0


async def test_a_payload_too_deep_to_fingerprint_is_rejected_not_returned(h: Harness) -> None:
    """A payload its schema allows but that cannot be encoded for the fingerprint is rejected once, not nacked in a loop."""
    import orjson as json

    deep: dict[str, Any] = {}
    for _ in range(300):
        deep = {"d": deep}
    body = b'{"id": "c-1", "type": "echo", "payload": ' + b'{"d": ' * 300 + b"{}" + b"}" * 300 + b"}"
    properties = pika.BasicProperties(content_type="application/json", message_id="c-1")
    with pytest.raises(json.JSONEncodeError):
        json.dumps(deep)  # orjson's own depth limit: what the fingerprint would hit
    await h.dispatcher.handle(Delivery(h.channel, 1, "echo", properties, body))  # type: ignore[arg-type]
    assert (h.statuses(), h.outbox.events[0]["error"]["code"]) == (["rejected"], "invalid_payload")
    assert (h.channel.acked, h.channel.nacked, h.calls) == ([1], [], 0)


class ListAskedAhead(SQLiteSuppressionList):
    """SQLite's list with the lookup a travelling store (Redis, PostgreSQL) sends ahead; records each ask.

    Its answer comes a turn later, as a server's does; ``fail`` makes it an error instead.
    """

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.asked: list[tuple[str, str, int]] = []
        self.looked_up: list[str] = []
        self.fail: Exception | None = None

    def contains_soon(self, account: str, number: str) -> asyncio.Future[bool]:
        stored = self.conn.execute("SELECT count(*) FROM commands").fetchone()[0]
        self.asked.append((account, number, stored))
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def answer_later() -> None:
            await asyncio.sleep(0)
            if self.fail is not None:
                answer.set_exception(self.fail)
            else:
                answer.set_result(await super(ListAskedAhead, self).contains(account, number))

        self._answering = asyncio.ensure_future(answer_later())
        return answer

    async def contains(self, account: str, number: str) -> bool:
        self.looked_up.append(number)
        return await super().contains(account, number)


@pytest.fixture
def ahead() -> Harness:
    return Harness(ListAskedAhead)


async def _check_numbers(h: Harness, *numbers: str) -> list[bool | str]:
    seen: list[bool | str] = []

    async def check(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        for number in numbers:
            try:
                seen.append(await ctx.suppressions.contains(ctx.account, number))
            except ConnectionError as exc:
                seen.append(str(exc))
        return {"ok": True}

    h.behaviour = check
    return seen


async def test_the_recipients_opt_out_lookup_travels_with_the_claim(ahead: Harness) -> None:
    """Sent before the claim is stored (one round trip for both); the handler's check of that number reads it."""
    suppressions = ahead.suppressions
    assert isinstance(suppressions, ListAskedAhead)
    await suppressions.add("default", "+12125550123", reason="STOP", source="test", now=1.0)
    seen = await _check_numbers(ahead, "+12125550123", "+13125550199")
    await ahead.deliver("echo", payload={"to": "+12125550123"})
    assert ahead.statuses() == ["succeeded"]
    assert suppressions.asked == [("default", "+12125550123", 0)]  # no record stored yet: before the claim
    assert seen == [True, False]
    assert suppressions.looked_up == ["+13125550199"]  # only the number not asked ahead


async def test_a_failed_lookup_fails_the_handlers_check_of_that_number(ahead: Harness) -> None:
    suppressions = ahead.suppressions
    assert isinstance(suppressions, ListAskedAhead)
    suppressions.fail = ConnectionError("store down")
    seen = await _check_numbers(ahead, "+12125550123")
    await ahead.deliver("echo", payload={"to": "+12125550123"})
    assert seen == ["store down"]


async def test_an_answer_nobody_reads_is_not_reported(ahead: Harness) -> None:
    """A replay asks too (the claim says DONE later); its failed lookup is not logged as never retrieved."""
    suppressions = ahead.suppressions
    assert isinstance(suppressions, ListAskedAhead)
    await ahead.deliver("echo", payload={"to": "+12125550123"})
    suppressions.fail = ConnectionError("store down")
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
    await ahead.deliver("echo", payload={"to": "+12125550123"})
    await suppressions._answering
    assert ahead.calls == 1 and len(suppressions.asked) == 2
    gc.collect()
    assert reported == []


async def test_a_failed_lookup_of_a_command_whose_claim_failed_is_not_reported(
    ahead: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails the claim and the lookup: the command goes back to the queue, and the
    lookup's failure, which nobody reads, is not logged as never retrieved."""
    suppressions = ahead.suppressions
    assert isinstance(suppressions, ListAskedAhead)
    suppressions.fail = ConnectionError("store down")

    async def claim_fails(*args: Any) -> Any:
        await asyncio.sleep(0.01)  # the lookup has answered (failed) by now
        raise ConnectionError("store down")

    monkeypatch.setattr(ahead.store, "claim", claim_fails)
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
    await ahead.deliver("echo", payload={"to": "+12125550123"})
    assert ahead.channel.nacked == [1] and ahead.calls == 0
    assert suppressions._answering.done()
    gc.collect()
    assert reported == []


class AnswersOnTheSpot(SQLiteSuppressionList):
    """A list with no lookup to send ahead (a backend without ``contains_soon``)."""

    contains_soon = None  # type: ignore[assignment]  # how a Protocol's method is blocked


@pytest.fixture
def on_the_spot() -> Harness:
    return Harness(AnswersOnTheSpot)


async def test_a_list_that_answers_on_the_spot_is_asked_in_the_handler(on_the_spot: Harness) -> None:
    """A list that cannot ask ahead: nothing is sent ahead, the handler's check goes to the list itself."""
    h = on_the_spot
    assert not isinstance(h.suppressions, AsksAhead)
    given: list[object] = []

    async def check(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        given.append(ctx.suppressions)
        return {"ok": True}

    h.behaviour = check
    await h.deliver("echo", payload={"to": "+12125550123"})
    assert given == [h.suppressions]


async def test_sqlite_reads_the_recipients_lookup_in_the_claims_transaction(h: Harness) -> None:
    """SQLite asks ahead too: the lookup is queued with the claim, and the handler's check reads its answer."""
    await h.suppressions.add("default", "+12125550123", reason="STOP", source="test", now=1.0)
    batches: list[int] = []
    flush = h.store.conn._flush

    def counting_flush() -> None:
        batches.append(len(h.store.conn._pending))
        flush()

    h.store.conn._flush = counting_flush  # type: ignore[method-assign]
    given: list[object] = []

    async def check(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
        given.append(ctx.suppressions)
        given.append(await ctx.suppressions.contains(ctx.account, "+12125550123"))
        return {"ok": True}

    h.behaviour = check
    await h.deliver("echo", payload={"to": "+12125550123"})
    assert isinstance(given[0], RecipientAskedAhead) and given[1] is True
    assert batches[0] == 2  # the lookup and the claim, one transaction
