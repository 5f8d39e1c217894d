"""The executor on its own: fakes record every call in one list, so the order of store, publish and ack is asserted."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pika
import pytest

from worker import executor as executor_module
from worker.amqp import PublishNacked
from worker.clock import ManualClock
from worker.decisions import Continue, Defer, Finish, InFlight, Reject, Republish, Retry
from worker.dispatcher import Delivery
from worker.envelope import Command, Rejection
from worker.errors import CommandRejected, PermanentError, RateLimited
from worker.executor import Executor
from worker.leases import Leases
from worker.observers import Observer
from worker.registry import CommandSpec
from worker.store import Lease

Calls = list[tuple[Any, ...]]


class FakeChannel:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def ack(self, tag: int) -> bool:
        self.calls.append(("ack", tag))
        return True

    def nack(self, tag: int, *, requeue: bool) -> bool:
        self.calls.append(("nack", tag, requeue))
        return True


class FakeOutbox:
    """Each publish records when it starts and when the broker 'confirms' (after a loop turn)."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.refuse: set[str] = set()

    async def _confirm(self, kind: str, detail: Any, then: Any) -> None:
        self.calls.append((kind, detail))
        await asyncio.sleep(0)
        if kind in self.refuse:
            raise PublishNacked("broker nacked the message")
        self.calls.append((f"{kind} confirmed", detail))
        if then is not None:  # as Channel.publish: called on the confirm, never on a nack
            then()

    async def event(self, body: bytes, **kwargs: Any) -> None:
        await self._confirm("event", orjson.loads(body)["status"], kwargs.get("then"))

    async def dead_letter(self, body: bytes, original: Any, **kwargs: Any) -> None:
        await self._confirm("dead_letter", kwargs["status"], kwargs.get("then"))

    async def delay(self, body: bytes, original: Any, **kwargs: Any) -> None:
        await self._confirm(
            "delay", (kwargs["seconds"], kwargs["headers"]["x-switchboard-delay-reason"]), kwargs.get("then")
        )


class FakeStore:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.stored: bytes | None = None

    async def complete(
        self, account: str, command_id: str, fingerprint: str, event: bytes, now: float
    ) -> bytes:
        self.calls.append(("store", orjson.loads(event)["status"], fingerprint))
        return self.stored or event

    async def release(self, account: str, command_id: str, state: Any = None, **kwargs: Any) -> None:
        self.calls.append(("release", state, kwargs["waiting"], kwargs["started"]))


class Recorder(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def finished(self, *args: Any) -> None:
        self.seen.append(("finished", *args))

    def deferred(self, type: str, reason: str) -> None:
        self.seen.append(("deferred", type, reason))

    def retrying(self, type: str, error: Any, delay_seconds: float) -> None:
        self.seen.append(("retrying", type, error.code, delay_seconds))

    def duplicate(self, type: str, status: str) -> None:
        self.seen.append(("duplicate", type, status))

    def interim(self, type: str, status: str) -> None:
        self.seen.append(("interim", type, status))


async def _handler(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {}


SPEC = CommandSpec(type="echo", vendor="acme", schema="command", handler=_handler, safe_to_repeat=True)


class Parts:
    def __init__(self) -> None:
        self.calls: Calls = []
        self.store = FakeStore(self.calls)
        self.outbox = FakeOutbox(self.calls)
        self.channel = FakeChannel(self.calls)
        self.clock = ManualClock(1_000_000.0)
        self.leases = Leases(self.store, self.clock)  # type: ignore[arg-type]
        self.observer = Recorder()
        self.executor = Executor(
            self.store,  # type: ignore[arg-type]
            self.outbox,  # type: ignore[arg-type]
            self.leases,
            (self.observer,),
            self.clock,
            types={"echo"},
            max_result_bytes=4096,
        )
        properties = pika.BasicProperties(content_type="application/json", message_id="c-1")
        self.delivery = Delivery(self.channel, 7, "echo", properties, b"{}")  # type: ignore[arg-type]
        command = Command("c-1", "echo", {"n": 1}, "default", {}, None, b"{}", properties, "echo", {})
        self.run = InFlight(command, SPEC, "fp-1", self.clock.monotonic(), {"n": 1}, attempts=2)

    def hold(self) -> Lease:
        lease = Lease("default", "c-1", 999_990.0)
        self.run.lease = lease
        self.leases.hold(self.run.key, lease)
        return lease

    async def execute(self, decision: Any, run: InFlight | None = None) -> None:
        await self.executor.execute(self.delivery, self.clock.monotonic(), decision, run or self.run)

    def kinds(self) -> list[Any]:
        return [call[0] for call in self.calls]


@pytest.fixture
def p() -> Parts:
    return Parts()


async def test_success_is_stored_then_published_then_acked(p: Parts) -> None:
    """Finish with a result: store, publish, confirm, and only then ack; no dead letter."""
    p.hold()
    await p.execute(Finish({"ok": True}))
    assert p.kinds() == ["store", "event", "event confirmed", "ack"]
    assert p.calls[0] == ("store", "succeeded", "fp-1")
    assert p.leases.held == {}, "a stored outcome's lease is no longer renewed"
    assert p.observer.seen == [("finished", "echo", "succeeded", None, 2, 0.0, False)]


async def test_failure_is_stored_and_dead_lettered_before_the_ack(p: Parts) -> None:
    """Finish with an error: stored as failed; the event and its dead letter are both confirmed before the ack."""
    p.hold()
    await p.execute(Finish(PermanentError("no", code="vendor_rejected")))
    assert p.calls[0] == ("store", "failed", "fp-1")
    ack = p.kinds().index("ack")
    assert ack == len(p.calls) - 1
    assert {"event confirmed", "dead_letter confirmed"} <= set(p.kinds()[:ack])
    assert ("dead_letter", "failed") in p.calls
    assert p.observer.seen[0][1:4] == ("echo", "failed", "vendor_rejected")


async def test_an_outcome_stored_first_by_another_worker_is_the_one_published(p: Parts) -> None:
    """When the store already holds an outcome, that one is published (one command, one outcome)."""
    p.store.stored = orjson.dumps({"event_id": "e-0", "command_id": "c-1", "type": "echo", "status": "failed",
                                   "attempts": 1, "duration_ms": 1.0, "meta": {},
                                   "error": {"code": "x", "message": "", "retryable": False, "details": {}}})  # fmt: skip
    await p.execute(Finish({"ok": True}))
    assert ("event", "failed") in p.calls and ("dead_letter", "failed") in p.calls


async def test_rejection_is_published_and_dead_lettered_never_stored(p: Parts) -> None:
    """Reject: no store call; rejected event and dead letter, confirmed, then ack."""
    rejection = Rejection(CommandRejected("bad", code="invalid_payload"), "c-1", "echo")
    await p.executor.execute(p.delivery, p.clock.monotonic(), Reject(rejection), None)
    assert "store" not in p.kinds()
    assert p.kinds()[-1] == "ack"
    assert ("event", "rejected") in p.calls and ("dead_letter", "rejected") in p.calls


async def test_a_refused_publish_is_not_acked_and_is_given_back_after_a_pause(
    p: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker nacks the event: execute raises with nothing acked; give_back nacks (requeue) after the pause."""
    p.outbox.refuse.add("event")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    p.hold()
    with pytest.raises(PublishNacked) as refused:
        await p.execute(Finish({"ok": True}))
    assert "ack" not in p.kinds()
    monkeypatch.setattr(executor_module.asyncio, "sleep", sleep)
    await p.executor.give_back(p.delivery, refused.value)
    assert slept == [executor_module.RETURN_AFTER_BROKER_ERROR_SECONDS]
    assert p.calls[-1] == ("nack", 7, True)


async def test_a_bug_is_given_back_at_once(p: Parts) -> None:
    """An error that is not the broker's: nack (requeue) without the pause."""
    await p.executor.give_back(p.delivery, KeyError("bug"))
    assert p.calls == [("nack", 7, True)]


async def test_retry_releases_then_sends_back_then_acks(p: Parts) -> None:
    """Retry: the claim is given back (pending, this attempt only), the delay copy confirmed, then ack."""
    lease = p.hold()
    p.run.state = None
    await p.execute(Retry(4.0, RateLimited("slow")))
    assert p.calls == [
        ("release", None, False, lease.attempt_started_at),
        ("delay", (4.0, "retry")),
        ("delay confirmed", (4.0, "retry")),
        ("ack", 7),
    ]
    assert p.leases.held == {}
    assert p.observer.seen == [("retrying", "echo", "rate_limited", 4.0)]


async def test_continue_keeps_the_state_publishes_progress_then_sends_back(p: Parts) -> None:
    """Continue: state stored (waiting), progress event, delay copy, then ack."""
    p.hold()
    await p.execute(Continue(state={"token": "t"}, after_seconds=30, progress={"state": "PENDING"}))
    assert p.kinds() == ["release", "event", "event confirmed", "delay", "delay confirmed", "ack"]
    assert p.calls[0][1:3] == ({"token": "t"}, True)
    assert ("event", "progress") in p.calls
    assert ("delay", (30, "continuation")) in p.calls


async def test_defer_of_a_held_command_releases_and_publishes_the_deferred_event(p: Parts) -> None:
    """Defer with a claim held (quiet hours): release waiting, deferred event, delay copy, ack."""
    p.hold()
    await p.execute(
        Defer(60.0, "quiet_hours", {"reason": "quiet_hours", "until": "2026-11-26T08:00:00-05:00"})
    )
    assert p.kinds() == ["release", "event", "event confirmed", "delay", "delay confirmed", "ack"]
    assert p.calls[0][2] is True
    assert ("interim", "echo", "deferred") in p.observer.seen
    assert ("deferred", "echo", "quiet_hours") in p.observer.seen


async def test_defer_before_the_claim_touches_no_store(p: Parts) -> None:
    """Defer without a claim (paused): only the delay copy, then ack."""
    await p.execute(Defer(3.0, "paused"))
    assert p.calls == [("delay", (3.0, "paused")), ("delay confirmed", (3.0, "paused")), ("ack", 7)]


async def test_a_refused_delay_copy_is_not_acked(p: Parts) -> None:
    """The broker refuses the delay copy: the original is not acked."""
    p.outbox.refuse.add("delay")
    with pytest.raises(PublishNacked):
        await p.execute(Defer(3.0, "paused"))
    assert "ack" not in p.kinds()


async def test_republish_sends_the_stored_event_and_its_dead_letter_again(p: Parts) -> None:
    """Republish of a failed outcome: the stored event and a dead-letter copy, confirmed, then ack; nothing stored."""
    stored = orjson.dumps({"event_id": "e-1", "command_id": "c-1", "type": "echo", "status": "failed",
                           "attempts": 1, "duration_ms": 1.0, "meta": {},
                           "error": {"code": "x", "message": "", "retryable": False, "details": {}}})  # fmt: skip
    await p.execute(Republish(stored))
    assert "store" not in p.kinds()
    assert p.kinds()[-1] == "ack"
    assert {"event confirmed", "dead_letter confirmed"} <= set(p.kinds())
    assert p.observer.seen == [("duplicate", "echo", "failed")]


def test_observer_set_is_chosen_once_and_spans_only_with_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing off: no span observer at all (no tracing cost per command); on: spans too; a ramp only when asked."""
    from worker import observers, tracing

    monkeypatch.setattr(tracing.state, "enabled", False)
    assert [type(o) for o in observers.observers()] == [observers.Metrics]
    monkeypatch.setattr(tracing.state, "enabled", True)
    assert [type(o) for o in observers.observers(print)] == [
        observers.Metrics,
        observers.Spans,
        observers.Ramp,
    ]


def test_each_hook_calls_only_the_observers_that_override_it() -> None:
    """A no-op hook is not called: the ramp and the spans observer are left out of the hooks they do not define."""
    from worker.observers import Hooks, Metrics, Ramp, Spans

    metrics, spans, ramp = Metrics(), Spans(), Ramp(print)
    hooks = Hooks((metrics, spans, ramp))
    assert hooks.observers == (metrics, spans, ramp)
    assert hooks.received == (metrics.received,)
    assert hooks.handled == (metrics.handled, ramp.handled)
    assert hooks.retrying == (metrics.retrying, spans.retrying)
    assert hooks.finished == (metrics.finished, spans.finished)
    assert hooks.deferred == (metrics.deferred,) and hooks.interim == (metrics.interim,)
    assert hooks.duplicate == (metrics.duplicate,)


def test_the_ramp_hears_only_transient_failures() -> None:
    """The prefetch ramp restarts its batch on a transient vendor failure, not on results or refusals."""
    from worker.errors import VendorRejected
    from worker.observers import Ramp

    heard: list[str] = []
    ramp = Ramp(heard.append)
    ramp.handled("echo", "acme", 0.05, {"ok": True})
    ramp.handled("echo", "acme", 0.05, VendorRejected("no"))
    ramp.handled("echo", "acme", 0.05, RateLimited("slow"))
    assert heard == ["acme"]
