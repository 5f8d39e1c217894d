"""Each gate on its own, without a broker or a store: it passes (None) or answers the expected decision."""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest

from worker import gates
from worker.controls import Controls
from worker.decisions import Defer, Finish, InFlight, Reject
from worker.envelope import Command
from worker.errors import InvalidPayload, OutcomeUnknown, PermanentError, RateLimited, VendorRejected
from worker.outbox import H_NOT_BEFORE
from worker.quiet_hours import SendingWindow
from worker.registry import CommandSpec
from worker.validation import SchemaValidator, Validators


async def _handler(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {}


def _normalise(payload: dict[str, Any]) -> dict[str, Any]:
    to = payload["to"]
    if not to.startswith("+"):
        raise InvalidPayload("not E.164", path="/payload/to")
    return {**payload, "to": to.replace(" ", "")}


def spec(*, safe: bool = True, check: Any = None) -> CommandSpec:
    return CommandSpec(
        type="text",
        vendor="acme",
        schema="command",
        handler=_handler,
        safe_to_repeat=safe,
        check=check,
        recipient=lambda p: p.get("to"),
    )


def in_flight(
    payload: dict[str, Any] | None = None,
    *,
    account: str = "default",
    headers: dict[str, Any] | None = None,
    command_spec: CommandSpec | None = None,
    redeliveries: int = 0,
    state: dict[str, Any] | None = None,
) -> InFlight:
    payload = payload if payload is not None else {"to": "+1 212 555 0123"}
    command = Command(
        id="c-1",
        type="text",
        payload=payload,
        account=account,
        meta={"m": 1},
        issued_at=None,
        body=b"{}",
        properties=pika.BasicProperties(headers=headers),
        routing_key="text",
        headers=dict(headers or {}),
    )
    run = InFlight(command, command_spec or spec(), "fp", 0.0, payload, redeliveries=redeliveries)
    run.state = state
    return run


def validators() -> Validators:
    found = Validators(["text"], {"text": "command"})
    found.payloads["text"] = SchemaValidator(
        {"type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}}, prefix="/payload"
    )
    return found


class TestPayloadCheck:
    gate = gates.PayloadCheck(validators(), {("acme", "default")})

    def test_passes_a_valid_command(self) -> None:
        """A configured account and a payload that fits its schema pass."""
        assert self.gate(in_flight(), time.time()) is None

    def test_unknown_account_is_rejected(self) -> None:
        """An account not configured for the vendor is rejected at /account."""
        decision = self.gate(in_flight(account="west"), time.time())
        assert isinstance(decision, Reject)
        assert decision.rejection.error.code == "unknown_account"
        assert decision.rejection.error.details["path"] == "/account"
        assert (decision.rejection.command_id, decision.rejection.meta) == ("c-1", {"m": 1})

    def test_schema_violation_is_rejected_with_its_path(self) -> None:
        """A payload breaking its schema is rejected invalid_payload, naming the field."""
        decision = self.gate(in_flight({"to": 5}), time.time())
        assert isinstance(decision, Reject)
        assert decision.rejection.error.code == "invalid_payload"
        assert decision.rejection.error.details["path"] == "/payload/to"

    def test_check_rule_is_rejected(self) -> None:
        """The type's own check rejects what the schema cannot say."""
        gate = gates.PayloadCheck(validators(), {("acme", "default")})
        decision = gate(in_flight({"to": "212"}, command_spec=spec(check=_normalise)), time.time())
        assert isinstance(decision, Reject)
        assert decision.rejection.error.details["path"] == "/payload/to"

    def test_the_handler_gets_the_normalised_payload_and_the_command_keeps_the_published_one(self) -> None:
        """check's result becomes run.payload; command.payload (fingerprinted) is what was published."""
        run = in_flight({"to": "+1 212 555 0123"}, command_spec=spec(check=_normalise))
        assert self.gate(run, time.time()) is None
        assert run.payload == {"to": "+12125550123"}
        assert run.command.payload == {"to": "+1 212 555 0123"}


class TestNotBefore:
    def test_a_command_due_later_goes_round_again(self) -> None:
        """A not-before more than half a second away defers it (waiting) for the rest."""
        now = 1_000_000.0
        decision = gates.not_before(in_flight(headers={H_NOT_BEFORE: int((now + 90) * 1000)}), now)
        assert decision == Defer(pytest.approx(90), "waiting")

    def test_a_command_due_now_passes(self) -> None:
        """Within the slack, or without the header, it runs."""
        now = 1_000_000.0
        assert gates.not_before(in_flight(headers={H_NOT_BEFORE: int((now + 0.2) * 1000)}), now) is None
        assert gates.not_before(in_flight(), now) is None


class TestPaused:
    def test_paused_account_defers(self) -> None:
        """A paused account's command is deferred (paused), at least the floor."""
        controls = Controls(None)
        controls.load({"pause:default:*": {}})
        decision = gates.Paused(controls, 3)(in_flight(), time.time())
        assert isinstance(decision, Defer) and decision.reason == "paused" and decision.seconds >= 3

    def test_other_account_passes(self) -> None:
        """A pause on another account lets this one through."""
        controls = Controls(None)
        controls.load({"pause:east:*": {}})
        assert gates.Paused(controls, 3)(in_flight(), time.time()) is None


class TestCancelled:
    async def test_cancelled_command_ends_failed(self) -> None:
        """A cancelled id ends failed/cancelled with the operator's reason."""
        controls = Controls(None)
        controls.load({"cancel:default:c-1": {"reason": "wrong list"}})
        decision = await gates.Cancelled(controls)(in_flight(), time.time())
        assert isinstance(decision, Finish) and isinstance(decision.outcome, PermanentError)
        assert decision.outcome.code == "cancelled"
        assert "wrong list" in decision.outcome.message

    async def test_other_ids_pass(self) -> None:
        """Only the cancelled id is stopped."""
        controls = Controls(None)
        controls.load({"cancel:default:c-2": {}})
        assert await gates.Cancelled(controls)(in_flight(), time.time()) is None


def _at(hour: int, zone: str) -> float:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime(2026, 11, 25, hour, 30, tzinfo=ZoneInfo(zone)).timestamp()


class TestQuietHours:
    windows = {("acme", "default"): SendingWindow.parse("08:00-21:00", "America/New_York")}

    async def test_outside_the_window_defers_to_its_opening(self) -> None:
        """At 22:30 in the recipient's zone it waits until 08:00, with a deferred event saying so."""
        now = _at(22, "America/New_York")
        decision = await gates.QuietHours(self.windows)(in_flight({"to": "+12125550123"}), now)
        assert isinstance(decision, Defer) and decision.reason == "quiet_hours"
        assert decision.seconds == pytest.approx(9.5 * 3600)
        assert decision.interim is not None and decision.interim["until"].startswith("2026-11-26T08:00")

    async def test_inside_the_window_passes(self) -> None:
        """At 10:30 it runs; and an account without a window always runs."""
        run = in_flight({"to": "+12125550123"})
        assert await gates.QuietHours(self.windows)(run, _at(10, "America/New_York")) is None
        assert await gates.QuietHours({})(run, _at(22, "America/New_York")) is None

    async def test_uses_the_normalised_payload(self) -> None:
        """The recipient is read from what check returned, the number the vendor gets."""
        run = in_flight({"to": "garbage"})
        run.payload = {"to": "+12125550123"}
        assert await gates.QuietHours(self.windows)(run, _at(22, "America/New_York")) is not None


class FakeBreaker:
    def __init__(self, admit: bool) -> None:
        self.admits = admit
        self.failures = 0
        self.successes = 0

    async def admit(self) -> bool:
        return self.admits

    def remaining_cooldown(self) -> float:
        return 0.2

    def record_failure(self) -> None:
        self.failures += 1

    def record_success(self) -> None:
        self.successes += 1


class TestCircuitOpen:
    async def test_open_breaker_defers_at_least_a_second(self) -> None:
        """An open breaker defers (circuit_open) for its cooldown, never under a second."""
        gate = gates.CircuitOpen({"acme": FakeBreaker(admit=False)})  # type: ignore[dict-item]
        assert await gate(in_flight(), time.time()) == Defer(1.0, "circuit_open")

    async def test_closed_or_missing_breaker_passes(self) -> None:
        """A breaker that admits, or none for the vendor, lets it through."""
        assert await gates.CircuitOpen({"acme": FakeBreaker(admit=True)})(in_flight(), 0) is None  # type: ignore[dict-item]
        assert await gates.CircuitOpen({})(in_flight(), 0) is None

    def test_record_counts_unavailability_and_resets_on_any_answer(self) -> None:
        """429/unavailable count as failures; a result or a vendor refusal is an answer."""
        breaker = FakeBreaker(admit=True)
        gate = gates.CircuitOpen({"acme": breaker})  # type: ignore[dict-item]
        gate.record("acme", RateLimited("slow"))
        gate.record("acme", {"ok": True})
        gate.record("acme", VendorRejected("no"))
        assert (breaker.failures, breaker.successes) == (1, 2)

    async def test_sees_breakers_added_after_it_was_built(self) -> None:
        """The runtime fills the mapping as vendors start: the gate reads it, not a copy."""
        breakers: dict[str, Any] = {}
        gate = gates.CircuitOpen(breakers)
        breakers["acme"] = FakeBreaker(admit=False)
        assert isinstance(await gate(in_flight(), 0), Defer)


class TestPoison:
    async def test_below_the_limit_passes(self) -> None:
        """Fewer redeliveries than the limit: run it."""
        assert await gates.Poison(5)(in_flight(redeliveries=4), 0) is None

    async def test_safe_command_ends_poison_message(self) -> None:
        """A safe command at the limit ends failed/poison_message."""
        decision = await gates.Poison(5)(in_flight(redeliveries=5), 0)
        assert isinstance(decision, Finish) and isinstance(decision.outcome, PermanentError)
        assert decision.outcome.code == "poison_message"

    async def test_unsafe_command_ends_outcome_unknown(self) -> None:
        """An unsafe first step at the limit may have reached the vendor: outcome_unknown."""
        decision = await gates.Poison(5)(in_flight(redeliveries=9, command_spec=spec(safe=False)), 0)
        assert isinstance(decision, Finish) and isinstance(decision.outcome, OutcomeUnknown)

    async def test_unsafe_continuation_ends_poison_message(self) -> None:
        """A continuation step (state kept) is safe to repeat: poison_message."""
        run = in_flight(redeliveries=9, command_spec=spec(safe=False), state={"token": "t"})
        decision = await gates.Poison(5)(run, 0)
        assert isinstance(decision, Finish) and isinstance(decision.outcome, PermanentError)
        assert decision.outcome.code == "poison_message"


def test_gates_run_in_the_documented_order() -> None:
    """Check, not-before, pause before the claim; cancel, quiet hours, breaker, poison after it."""
    breaker = gates.CircuitOpen({})
    before = gates.before_claim(validators(), set(), Controls(None), 3)
    after = gates.after_claim(Controls(None), {}, breaker, 5)
    assert [type(g) for g in before] == [gates.PayloadCheck, type(gates.not_before), gates.Paused]
    assert [type(g) for g in after] == [gates.Cancelled, gates.QuietHours, gates.CircuitOpen, gates.Poison]
    assert after[2] is breaker
