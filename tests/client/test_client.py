"""The publisher client against the real broker: what it puts on the wire, and how it waits."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tests.client.broker_fakes import Answer, Observer, Proxy, Responder, terminal
from worker.client import CallTimeout, PublishError, Switchboard
from worker.errors import CommandRejected, InvalidPayload

pytestmark = pytest.mark.integration

PAYLOAD = {"to_number": "+15551234567", "text": "hello"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def client(amqp_url: str, payload_schemas: dict[str, dict[str, Any]]) -> Iterator[Switchboard]:
    with Switchboard(amqp_url, payload_schemas=payload_schemas) as sb:
        yield sb


class TestSend:
    def test_publishes_the_envelope_as_a_persistent_json_message(
        self, client: Switchboard, observer: Observer, command_type: str
    ) -> None:
        """send() puts the v1 envelope on switchboard.commands with routing key = type and message_id = id."""
        command_id = client.send(command_type, PAYLOAD, id="order-42", account="east", meta={"trace": "t1"})
        got = observer.get()
        assert command_id == "order-42"
        assert got.routing_key == command_type
        assert got.envelope["id"] == "order-42"
        assert got.envelope["type"] == command_type
        assert got.envelope["payload"] == PAYLOAD
        assert got.envelope["account"] == "east"
        assert got.envelope["meta"] == {"trace": "t1"}
        assert RFC3339_UTC.match(got.envelope["issued_at"])
        assert got.properties.message_id == "order-42"
        assert got.properties.delivery_mode == 2
        assert got.properties.content_type == "application/json"
        assert got.properties.reply_to is None

    def test_carries_the_callers_trace_context(
        self, client: Switchboard, observer: Observer, command_type: str
    ) -> None:
        """Inside the caller's span, the command carries a W3C traceparent of that trace (the worker joins it)."""
        trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
        parent = SpanContext(
            trace_id=trace_id, span_id=0x00F067AA0BA902B7, is_remote=False, trace_flags=TraceFlags(1)
        )
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
        try:
            client.send(command_type, PAYLOAD, id="traced")
        finally:
            otel_context.detach(token)
        client.send(command_type, PAYLOAD, id="untraced")
        traced, untraced = observer.get(), observer.get()
        assert traced.properties.headers["traceparent"].split("-")[1] == format(trace_id, "032x")
        # Outside it: no header (no SDK), or a trace of its own (an SDK that other tests installed).
        assert format(trace_id, "032x") not in str(untraced.properties.headers)

    def test_default_id_is_a_fresh_uuid_and_optional_fields_are_left_out(
        self, client: Switchboard, observer: Observer, command_type: str
    ) -> None:
        """Without id=, each send gets a new UUID; account and meta are absent unless given."""
        first = client.send(command_type, PAYLOAD)
        second = client.send(command_type, PAYLOAD)
        assert first != second
        assert uuid.UUID(first).version == 4
        envelope = observer.get().envelope
        assert envelope["id"] == first
        assert "account" not in envelope and "meta" not in envelope

    def test_invalid_payload_fails_in_the_caller_and_publishes_nothing(
        self, client: Switchboard, observer: Observer, command_type: str
    ) -> None:
        """A payload breaking its schema raises InvalidPayload with the field's path; nothing is sent."""
        with pytest.raises(InvalidPayload) as caught:
            client.send(command_type, {"to_number": "555", "text": "hello"}, id="bad")
        assert caught.value.path == "/payload/to_number"
        assert "555" not in str(caught.value)  # the value (a phone number) is not echoed
        client.send(command_type, PAYLOAD, id="good")
        assert observer.get().envelope["id"] == "good"  # the first thing to arrive is the valid one
        assert observer.count() == 0

    def test_misspelled_field_names_the_unexpected_property(
        self, client: Switchboard, command_type: str
    ) -> None:
        """An unknown payload field is reported by name with the payload's path."""
        with pytest.raises(InvalidPayload) as caught:
            client.send(command_type, {**PAYLOAD, "txet": "x"})
        assert caught.value.path == "/payload"
        assert "txet" in str(caught.value)

    def test_unknown_type_and_bad_envelope_are_rejected_locally(
        self, client: Switchboard, command_type: str
    ) -> None:
        """A type without a schema, or an id over 128 characters, raises CommandRejected before publishing."""
        with pytest.raises(CommandRejected, match="unknown command type 'no_such_command'"):
            client.send("no_such_command", PAYLOAD)
        with pytest.raises(CommandRejected) as caught:
            client.send(command_type, PAYLOAD, id="x" * 129)
        assert caught.value.details["path"] == "/id"

    def test_unroutable_command_raises(
        self, amqp_url: str, payload_schemas: dict[str, dict[str, Any]], command_type: str
    ) -> None:
        """A command no queue would receive raises PublishError instead of vanishing."""
        exchange = f"test.unbound.{uuid.uuid4().hex[:8]}"
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        connection.channel().exchange_declare(exchange, "topic", auto_delete=True)
        try:
            with (
                Switchboard(amqp_url, payload_schemas=payload_schemas, exchange=exchange) as sb,
                pytest.raises(PublishError, match="unroutable"),
            ):
                sb.send(command_type, PAYLOAD)
        finally:
            connection.channel().exchange_delete(exchange)
            connection.close()

    def test_missing_exchange_raises(
        self, amqp_url: str, payload_schemas: dict[str, dict[str, Any]], command_type: str
    ) -> None:
        """Publishing to an exchange that does not exist raises PublishError (the broker's 404)."""
        with (
            Switchboard(amqp_url, payload_schemas=payload_schemas, exchange="test.missing.exchange") as sb,
            pytest.raises(PublishError, match=r"NOT_FOUND|404"),
        ):
            sb.send(command_type, PAYLOAD)

    def test_survives_a_dropped_connection(
        self,
        proxied_url: str,
        proxy: Proxy,
        payload_schemas: dict[str, dict[str, Any]],
        observer: Observer,
        command_type: str,
    ) -> None:
        """After the connection drops, the next send reconnects and the command arrives."""
        with Switchboard(proxied_url, payload_schemas=payload_schemas) as sb:
            sb.send(command_type, PAYLOAD, id="before")
            assert observer.get().envelope["id"] == "before"
            proxy.cut()
            sb.send(command_type, PAYLOAD, id="after")
            assert observer.get().envelope["id"] == "after"
        assert proxy.accepted == 2


def _succeed(envelope: dict[str, Any], seen: int) -> list[dict[str, Any]]:
    return [terminal(envelope)]


class TestCall:
    def test_returns_the_terminal_event_for_its_command(
        self, client: Switchboard, responder: Callable[[Answer], Responder], command_type: str
    ) -> None:
        """call() publishes with reply_to and returns the terminal event correlated to its id."""
        fake = responder(_succeed)
        event = client.call(command_type, PAYLOAD, id="call-1", meta={"k": "v"}, timeout=10)
        assert event["command_id"] == "call-1"
        assert event["status"] == "succeeded"
        assert event["result"] == {"echo": PAYLOAD}
        assert fake.reply_queues and fake.reply_queues[0].startswith("amq.gen-")

    def test_progress_events_go_to_the_callback_not_the_return_value(
        self, client: Switchboard, responder: Callable[[Answer], Responder], command_type: str
    ) -> None:
        """Non-terminal events reach on_event in order; call() returns only at the terminal one."""

        def answer(envelope: dict[str, Any], seen: int) -> list[dict[str, Any]]:
            return [
                terminal(envelope, "progress"),
                terminal(envelope, "deferred"),
                terminal(envelope, "failed"),
            ]

        responder(answer)
        progress: list[str] = []
        event = client.call(
            command_type, PAYLOAD, timeout=10, on_event=lambda e: progress.append(e["status"])
        )
        assert progress == ["progress", "deferred"]
        assert event["status"] == "failed"

    def test_times_out_when_no_one_answers(
        self, client: Switchboard, observer: Observer, command_type: str
    ) -> None:
        """With no worker, call() raises CallTimeout naming the command, which was still published."""
        with pytest.raises(CallTimeout) as caught:
            client.call(command_type, PAYLOAD, id="lonely", timeout=0.5)
        assert caught.value.command_id == "lonely"
        assert observer.get().envelope["id"] == "lonely"

    def test_a_late_answer_to_an_abandoned_call_is_ignored(
        self, client: Switchboard, responder: Callable[[Answer], Responder], command_type: str
    ) -> None:
        """An event for an earlier, timed-out call never becomes the answer to the next call."""
        release = threading.Event()

        def answer(envelope: dict[str, Any], seen: int) -> list[dict[str, Any]]:
            if envelope["id"] == "slow":
                release.wait(10)  # answer "slow" only after the caller has given up on it
            return [terminal(envelope)]

        responder(answer)
        with pytest.raises(CallTimeout):
            client.call(command_type, PAYLOAD, id="slow", timeout=0.3)
        release.set()
        event = client.call(command_type, PAYLOAD, id="fast", timeout=10)
        assert event["command_id"] == "fast"

    def test_survives_a_dropped_connection_by_asking_again_with_the_same_id(
        self,
        proxied_url: str,
        proxy: Proxy,
        payload_schemas: dict[str, dict[str, Any]],
        responder: Callable[[Answer], Responder],
        command_type: str,
    ) -> None:
        """If the connection drops while waiting, call() re-publishes the same id to a new reply queue."""
        waiting = threading.Event()

        def answer(envelope: dict[str, Any], seen: int) -> list[dict[str, Any]]:
            if seen == 1:
                return [terminal(envelope, "progress")]  # no outcome: the test cuts the connection now
            return [terminal(envelope)]

        fake = responder(answer)

        def cut_while_waiting() -> None:
            # Cut once call() is waiting (its progress callback ran): cut earlier, while the publish
            # still waits for its confirm, and the publish itself is retried, a third copy.
            if waiting.wait(10):
                proxy.cut()

        cutter = threading.Thread(target=cut_while_waiting)
        cutter.start()
        with Switchboard(proxied_url, payload_schemas=payload_schemas) as sb:
            event = sb.call(
                command_type, PAYLOAD, id="resilient", timeout=20, on_event=lambda _event: waiting.set()
            )
        cutter.join()
        assert event["command_id"] == "resilient"
        assert fake.seen["resilient"] == 2
        assert len(set(fake.reply_queues)) == 2

    def test_survives_a_connection_drop_during_the_publish(
        self,
        proxied_url: str,
        proxy: Proxy,
        payload_schemas: dict[str, dict[str, Any]],
        responder: Callable[[Answer], Responder],
        command_type: str,
    ) -> None:
        """If the publish had to reconnect, the reply queue it named is gone: call() asks again with a new one."""

        class CutBeforeFirstPublish(Switchboard):
            cut = False

            def _ensure_reply_queue(self) -> str:
                name = super()._ensure_reply_queue()
                if not self.cut:
                    self.cut = True
                    proxy.cut()  # the queue just declared dies with this connection
                return name

        fake = responder(_succeed)
        with CutBeforeFirstPublish(proxied_url, payload_schemas=payload_schemas) as sb:
            event = sb.call(command_type, PAYLOAD, id="cut-mid-publish", timeout=20)
        assert event["command_id"] == "cut-mid-publish"
        assert proxy.accepted >= 2
        assert fake.seen["cut-mid-publish"] >= 1


class TestHelpers:
    def test_helper_sends_keyword_fields_as_the_payload(
        self, client: Switchboard, observer: Observer, command_type: str
    ) -> None:
        """commands.<type>(**fields) sends those fields; None leaves a field out; keyword names take a '_'."""
        helper = getattr(client.commands, command_type)
        helper(
            to_number="+15551234567",
            text="hi",
            tags=None,
            from_="me",
            account_="acct-field",
            id="h-1",
            account="east",
        )
        got = observer.get().envelope
        assert got["id"] == "h-1"
        assert got["account"] == "east"
        assert got["payload"] == {
            "to_number": "+15551234567",
            "text": "hi",
            "from": "me",
            "account": "acct-field",
        }

    def test_helper_call_returns_the_terminal_event(
        self, client: Switchboard, responder: Callable[[Answer], Responder], command_type: str
    ) -> None:
        """commands.<type>.call(**fields) waits like Switchboard.call."""
        responder(_succeed)
        event = getattr(client.commands, command_type).call(to_number="+15551234567", text="hi", timeout=10)
        assert event["result"] == {"echo": {"to_number": "+15551234567", "text": "hi"}}
