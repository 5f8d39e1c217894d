"""Small runtime parts: envelope checks, masking, config, retry policy, breaker, delay buckets, HTTP errors."""

from __future__ import annotations

import random

import orjson
import pika
import pytest
from aiohttp import web

from worker import topology
from worker.breaker import BreakerState, CircuitBreaker
from worker.config import ConfigError, load_settings, redacted
from worker.envelope import Command, Rejection, decode
from worker.errors import OutcomeUnknown, PermanentError, RateLimited, VendorUnavailable
from worker.logging import mask_phone_numbers
from worker.retry import Retry, RetryPolicy, decide
from worker.validation import Validators
from worker.vendor_http import VendorHTTP, parse_retry_after

VALIDATORS = Validators(["send_text"], {"send_text": "send_text"})
JSON = pika.BasicProperties(content_type="application/json")


def code_of(body: bytes, properties: pika.BasicProperties = JSON, routing_key: str = "send_text") -> str:
    result = decode(body, properties, routing_key, VALIDATORS, max_bytes=1024)
    assert isinstance(result, Rejection)
    return result.error.code


class TestEnvelope:
    def test_each_bad_input_has_its_own_code(self) -> None:
        """Every kind of bad message maps to a specific rejection code."""
        ok = orjson.dumps({"id": "a", "type": "send_text", "payload": {}})
        assert code_of(b"x" * 2000) == "message_too_large"
        assert code_of(ok, pika.BasicProperties(content_type="text/plain")) == "unsupported_encoding"
        assert code_of(b"\xff\xfe") == "not_utf8"
        assert code_of(b"{") == "not_json"
        assert code_of(b"[]") == "invalid_envelope"
        assert code_of(orjson.dumps({"id": "a", "type": "send_text"})) == "invalid_envelope"
        assert code_of(ok, pika.BasicProperties(message_id="b")) == "message_id_mismatch"
        assert (
            code_of(orjson.dumps({"id": "a", "type": "fly", "payload": {}}), routing_key="fly")
            == "unknown_type"
        )
        assert code_of(ok, routing_key="create_job") == "routing_key_mismatch"

    def test_envelope_error_names_the_field(self) -> None:
        """A wrong field type is reported with its JSON pointer."""
        body = orjson.dumps({"id": "a", "type": "send_text", "payload": {}, "meta": 3})
        result = decode(body, JSON, "send_text", VALIDATORS, max_bytes=1024)
        assert isinstance(result, Rejection)
        assert result.error.details["path"] == "/meta"

    def test_unknown_envelope_field_is_rejected(self) -> None:
        """Fields outside the envelope are refused, not ignored."""
        assert (
            code_of(orjson.dumps({"id": "a", "type": "send_text", "payload": {}, "extra": 1}))
            == "invalid_envelope"
        )

    def test_deep_nesting_is_rejected_not_crashing(self) -> None:
        """JSON nested deeper than the parser allows is not_json."""
        assert code_of(b"[" * 100000 + b"]" * 100000, routing_key="send_text") in (
            "not_json",
            "message_too_large",
        )
        result = decode(b"[" * 600 + b"]" * 600, JSON, "send_text", VALIDATORS, max_bytes=10**6)
        assert isinstance(result, Rejection)

    def test_valid_envelope_decodes(self) -> None:
        """A valid envelope becomes a Command with defaults filled in."""
        body = orjson.dumps({"id": "a", "type": "send_text", "payload": {"x": 1}})
        command = decode(body, pika.BasicProperties(message_id="a"), "send_text", VALIDATORS, max_bytes=1024)
        assert isinstance(command, Command)
        assert (command.account, command.meta) == ("default", {})


class TestMasking:
    @pytest.mark.parametrize("text", ["+18885553333", "call +1 (888) 555-3333 now", "8885553333"])
    def test_phone_numbers_are_masked(self, text: str) -> None:
        """Phone numbers never appear whole in logs."""
        masked = mask_phone_numbers(text)
        assert "555" not in masked
        assert "*" in masked

    @pytest.mark.parametrize("text", ["2026-11-25T04:32:17Z", "took 1234567 ms", "id 12345"])
    def test_dates_and_short_numbers_stay(self, text: str) -> None:
        """Dates, durations and short ids are left readable."""
        assert mask_phone_numbers(text) == text


class TestConfig:
    def test_bad_settings_give_one_line_each(self) -> None:
        """Each bad setting is named by its variable, one line each."""
        with pytest.raises(ConfigError) as info:
            load_settings({"SWITCHBOARD_METRICS_PORT": "x", "SWITCHBOARD_MAX_IN_FLIGHT": "0"})
        assert len(info.value.lines) == 2
        assert info.value.lines[0].startswith("SWITCHBOARD_")

    def test_secrets_are_redacted(self) -> None:
        """config show never prints the broker password."""
        shown = redacted(load_settings({"SWITCHBOARD_AMQP_URL": "amqp://user:hunter2@host/"}))
        assert "hunter2" not in orjson.dumps(shown).decode()


class TestRetryPolicy:
    policy = RetryPolicy(max_attempts=4, max_age_seconds=100, base_seconds=1, cap_seconds=10)

    def test_retry_after_is_a_floor(self) -> None:
        """The delay is never shorter than the vendor's Retry-After."""
        decision = decide(
            RateLimited("x", retry_after=9),
            attempts=1,
            age_seconds=0,
            safe_to_repeat=False,
            policy=self.policy,
        )
        assert isinstance(decision, Retry) and decision.delay_seconds >= 9

    def test_full_jitter_stays_under_the_cap(self) -> None:
        """Backoff is drawn in [0, min(cap, base*2^(n-1))]."""
        rng = random.Random(1)
        assert all(0 <= self.policy.backoff(n, rng) <= min(10, 2 ** (n - 1)) for n in range(1, 20))

    def test_maybe_applied_unsafe_is_outcome_unknown(self) -> None:
        """An error that may have been applied is never retried for an unsafe command."""
        error = VendorUnavailable("x", maybe_applied=True)
        assert isinstance(
            decide(error, attempts=1, age_seconds=0, safe_to_repeat=False, policy=self.policy), OutcomeUnknown
        )
        assert isinstance(
            decide(error, attempts=1, age_seconds=0, safe_to_repeat=True, policy=self.policy), Retry
        )

    def test_max_attempts_and_age(self) -> None:
        """Past max attempts or max age the command gives up."""
        error = VendorUnavailable("x")
        assert isinstance(
            decide(error, attempts=4, age_seconds=0, safe_to_repeat=True, policy=self.policy), PermanentError
        )
        assert isinstance(
            decide(error, attempts=1, age_seconds=100.5, safe_to_repeat=True, policy=self.policy),
            PermanentError,
        )


class TestBreaker:
    def test_opens_probes_and_closes(self) -> None:
        """N failures open it; after the cool-down one probe runs; a success closes it."""
        now = [0.0]
        breaker = CircuitBreaker("acme", failure_threshold=3, cooldown_seconds=10, clock=lambda: now[0])
        for _ in range(3):
            breaker.record_failure()
        assert breaker.state == BreakerState.OPEN and not breaker.allow()
        now[0] = 11
        assert breaker.allow() and breaker.state == BreakerState.HALF_OPEN
        assert not breaker.allow()
        breaker.record_success()
        assert breaker.state == BreakerState.CLOSED and breaker.allow()

    def test_failed_probe_reopens(self) -> None:
        """A failing probe opens the breaker again for a new cool-down."""
        now = [0.0]
        breaker = CircuitBreaker("acme", failure_threshold=1, cooldown_seconds=10, clock=lambda: now[0])
        breaker.record_failure()
        now[0] = 10
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state == BreakerState.OPEN and not breaker.allow()


def test_delay_bucket_never_waits_less_than_asked() -> None:
    """The chosen delay queue's TTL is at least the wanted delay (up to the longest bucket)."""
    for seconds in (0.1, 1, 1.5, 7, 30, 31, 3599):
        assert topology.delay_bucket(seconds) >= seconds
    assert topology.delay_bucket(10**6) == topology.DELAY_BUCKETS_SECONDS[-1]


def test_retry_after_parsing() -> None:
    """Retry-After is read as seconds or as an HTTP date."""
    assert parse_retry_after("5") == 5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 10) == pytest.approx(10)
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize(
    ("status", "error", "applied"),
    [
        (429, RateLimited, False),
        (503, VendorUnavailable, False),
        (500, VendorUnavailable, True),
        (502, VendorUnavailable, True),
    ],
)
async def test_vendor_http_maps_statuses(status: int, error: type[Exception], applied: bool) -> None:
    """429/503 are transient and not applied; other 5xx may have been applied."""
    import aiohttp

    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Retry-After": "3"})

    app = web.Application()
    app.router.add_post("/x", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            http = VendorHTTP("acme", session, f"http://127.0.0.1:{port}")
            with pytest.raises(error) as info:
                await http.request("POST", "/x")
            assert info.value.maybe_applied is applied  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


async def test_connection_refused_is_not_applied() -> None:
    """A vendor that cannot be reached did nothing: retry is safe."""
    import aiohttp

    from tests.support.worker import free_port

    async with aiohttp.ClientSession() as session:
        http = VendorHTTP("acme", session, f"http://127.0.0.1:{free_port()}")
        with pytest.raises(VendorUnavailable) as info:
            await http.request("GET", "/x")
    assert info.value.maybe_applied is False
    assert info.value.code == "vendor_unreachable"


def test_either_or_fields_get_a_readable_message() -> None:
    """A oneOf of required fields says which fields, not the whole value."""
    from worker.validation import SchemaValidator

    validator = SchemaValidator(
        {"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}]}, prefix="/payload"
    )
    assert validator.errors({})[0]["message"] == "exactly one of a, b is required"
    assert validator.errors({"a": 1, "b": 2})[0]["message"] == "give only one of a, b, not several"


async def test_delayed_copy_drops_the_broker_delivery_count() -> None:
    """A command sent back through a delay queue does not inherit the old redelivery count."""
    import asyncio

    from worker.outbox import Outbox

    published: list[tuple[str, str, pika.BasicProperties]] = []

    class Channel:
        def publish(
            self,
            exchange: str,
            routing_key: str,
            body: bytes,
            properties: pika.BasicProperties,
            *,
            mandatory: bool = False,
            then: object = None,
        ) -> asyncio.Future[None]:
            published.append((exchange, routing_key, properties))
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    outbox = Outbox(lambda: Channel())  # type: ignore[arg-type,return-value]
    original = pika.BasicProperties(
        message_id="a", headers={"x-delivery-count": 7, "traceparent": "00-x", "f": 1.5}
    )
    await outbox.delay(
        b"{}", original, routing_key="send_text", seconds=3, headers={"x-switchboard-attempts": 2}
    )
    exchange, routing_key, properties = published[0]
    assert (exchange, routing_key) == ("switchboard.wait", "send_text")
    assert "x-delivery-count" not in properties.headers
    assert properties.headers["switchboard-wait"] == "5s"
    assert properties.headers["traceparent"] == "00-x"
    assert properties.headers["f"] == "1.5"
