"""Issue 14 items 2, 6, 13: what a publisher puts in a command cannot grow metrics or steer replies,
and its trace context reaches the events even with tracing off."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import orjson
import pika
import pytest

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import SEND, pidj_env
from tests.support.amqp import EventTap, command_body, connect, publish_command, publish_raw
from tests.support.worker import WorkerProcess

ALLOWED_REPLY_QUEUE = f"security-allowed-replies-{uuid.uuid4().hex[:8]}"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def pidj() -> Iterator[PidjSimulator]:
    simulator = PidjSimulator()
    with simulator.running_in_thread():
        yield simulator


@pytest.fixture
def worker(broker: None, pidj: PidjSimulator) -> Iterator[WorkerProcess]:
    process = WorkerProcess(pidj_env(pidj, reply_to_allow=ALLOWED_REPLY_QUEUE))
    for name in [n for n in process.env if n.startswith("OTEL_")]:
        del process.env[name]  # tracing off: no exporter configured
    with process:
        yield process


@pytest.fixture
def victim_queue() -> Iterator[str]:
    """A durable queue the publisher has no business writing to (like switchboard.dead)."""
    name = f"security-victim-{uuid.uuid4().hex[:8]}"
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(name, durable=True)
    yield name
    channel.queue_delete(name)
    connection.close()


def _depth(queue: str) -> int:
    connection = connect()
    try:
        count: int = connection.channel().queue_declare(queue, passive=True).method.message_count
        return count
    finally:
        connection.close()


def test_made_up_types_make_no_metric_series(worker: WorkerProcess) -> None:
    """200 commands with invented types are counted under type="unknown", never under their own names."""
    invented = [f"made_up_{n}" for n in range(200)]
    with EventTap() as tap:
        for name in invented:
            publish_command(name, {})
        tap.wait_for_count(len(invented))
    text = worker.metrics()
    assert not re.search(r'type="made_up_', text)
    assert worker.metric("switchboard_commands_received_total", type="unknown") == len(invented)
    assert worker.metric("switchboard_commands_finished_total", type="unknown", status="rejected") == len(
        invented
    )
    assert worker.metric("switchboard_dead_letters_total", type="unknown", status="rejected") == len(invented)


def test_reply_to_a_shared_queue_is_rejected_and_nothing_is_sent_there(
    worker: WorkerProcess, pidj: PidjSimulator, victim_queue: str
) -> None:
    """A reply_to naming an ordinary queue ends rejected (reply_to_not_allowed); that queue gets nothing."""
    with EventTap() as tap:
        command_id = publish_command("send_text", SEND, reply_to=victim_queue)
        event = tap.wait_for(command_id)
    assert event["status"] == "rejected"
    assert event["error"]["code"] == "reply_to_not_allowed"
    assert _depth(victim_queue) == 0
    assert pidj.effects() == []


def test_reply_to_on_the_allow_list_gets_the_event(worker: WorkerProcess) -> None:
    """A queue named in SWITCHBOARD_REPLY_TO_ALLOW receives the terminal event."""
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(ALLOWED_REPLY_QUEUE, durable=False, auto_delete=False)
    try:
        with EventTap() as tap:
            command_id = publish_command("send_text", SEND, reply_to=ALLOWED_REPLY_QUEUE)
            assert tap.wait_for(command_id)["status"] == "succeeded"
        method, properties, _ = channel.basic_get(ALLOWED_REPLY_QUEUE, auto_ack=True)
        assert method is not None and properties.correlation_id == command_id
    finally:
        channel.queue_delete(ALLOWED_REPLY_QUEUE)
        connection.close()


def _event_properties(tap: EventTap, command_id: str) -> pika.BasicProperties:
    tap.wait_for(command_id)
    for _, properties, body in tap.raw:
        if command_id.encode() in body:
            return properties
    raise AssertionError("event not seen")


def test_traceparent_header_reaches_the_event_with_tracing_off(worker: WorkerProcess) -> None:
    """With no exporter, the command's traceparent header is on its result event."""
    command_id, body = command_body("send_text", SEND)
    with EventTap() as tap:
        publish_raw(
            "send_text",
            body,
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id=command_id,
                headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
            ),
        )
        headers = _event_properties(tap, command_id).headers or {}
    assert headers.get("traceparent") == TRACEPARENT
    assert headers.get("tracestate") == "vendor=1"


def test_meta_traceparent_reaches_a_rejected_event_with_tracing_off(worker: WorkerProcess) -> None:
    """meta.traceparent is passed on too, even when the command is rejected."""
    with EventTap() as tap:
        command_id = publish_command("send_text", {"to_number": "nope"}, meta={"traceparent": TRACEPARENT})
        headers = _event_properties(tap, command_id).headers or {}
    assert headers.get("traceparent") == TRACEPARENT


def test_a_malformed_traceparent_is_not_carried(worker: WorkerProcess) -> None:
    """Only a well-formed W3C traceparent is passed on: the header is not a channel for arbitrary bytes."""
    with EventTap() as tap:
        command_id = publish_command("send_text", SEND, meta={"traceparent": "not a trace <script>"})
        headers = _event_properties(tap, command_id).headers or {}
    assert "traceparent" not in headers


def test_direct_reply_to_still_gets_the_event(worker: WorkerProcess) -> None:
    """A command sent with direct reply-to (amq.rabbitmq.reply-to) gets its event back on it."""
    connection = connect()
    channel = connection.channel()
    replies: list[bytes] = []
    channel.basic_consume("amq.rabbitmq.reply-to", lambda *args: replies.append(args[3]), auto_ack=True)
    command_id, body = command_body("send_text", SEND)
    try:
        channel.basic_publish(
            "switchboard.commands",
            "send_text",
            body,
            pika.BasicProperties(
                content_type="application/json", message_id=command_id, reply_to="amq.rabbitmq.reply-to"
            ),
        )
        deadline = time.monotonic() + 20
        while not replies and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
    finally:
        connection.close()
    assert replies, "no reply on direct reply-to"
    event = orjson.loads(replies[0])
    assert (event["command_id"], event["status"]) == (command_id, "succeeded")
