"""The public contract, end to end: pika publisher -> worker -> Pidj simulator -> events."""

from __future__ import annotations

import orjson
import pika
import pytest

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import SEND
from tests.support.amqp import EventTap, drain_queue, publish_command, publish_raw, reply_queue
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def dead_letters() -> list[tuple[pika.BasicProperties, bytes]]:
    return drain_queue("switchboard.dead")


def test_send_text_succeeds_and_is_counted(worker: WorkerProcess, pidj: PidjSimulator) -> None:
    """A valid send_text reaches Pidj once, ends in send_text.succeeded, and /metrics counts it."""
    with EventTap() as tap:
        command_id = publish_command("send_text", SEND, meta={"trace": "abc"})
        event = tap.wait_for(command_id)
    assert event["status"] == "succeeded"
    assert event["type"] == "send_text"
    assert event["meta"] == {"trace": "abc"}
    assert event["attempts"] == 1
    assert event["result"]["message"] == "Text sent."
    assert set(event) >= {"event_id", "command_id", "occurred_at", "duration_ms"}
    assert len(pidj.effects()) == 1
    assert worker.metric("switchboard_commands_finished_total", type="send_text", status="succeeded") == 1
    assert (
        worker.metric("switchboard_vendor_requests_total", vendor="pidj", endpoint="/send", status="200") == 1
    )


def test_event_routing_key_is_type_and_status(worker: WorkerProcess) -> None:
    """The terminal event is published with routing key <type>.<status>."""
    with EventTap("send_text.succeeded") as tap:
        command_id = publish_command("send_text", SEND)
        assert tap.wait_for_routing_key("send_text.succeeded")["command_id"] == command_id


def test_not_json_is_rejected_and_dead_lettered(worker: WorkerProcess) -> None:
    """A body that is not JSON gives invalid.rejected (code not_json) and lands in switchboard.dead."""
    with EventTap() as tap:
        publish_raw(
            "send_text", b"{not json", properties=pika.BasicProperties(message_id="bad-1", delivery_mode=2)
        )
        event = tap.wait_for_routing_key("invalid.rejected")
    assert event["status"] == "rejected"
    assert event["error"]["code"] == "not_json"
    assert event["command_id"] == "bad-1"
    letters = dead_letters()
    assert [body for _, body in letters] == [b"{not json"]
    assert letters[0][0].headers["x-switchboard-status"] == "rejected"
    assert orjson.loads(letters[0][0].headers["x-switchboard-error"])["code"] == "not_json"


def test_unknown_type_is_rejected(worker: WorkerProcess) -> None:
    """A type no handler knows, published with its own routing key, is rejected as unknown_type."""
    with EventTap() as tap:
        command_id = publish_command("launch_rocket", {"to": "moon"})
        event = tap.wait_for(command_id)
    assert event["status"] == "rejected"
    assert event["type"] == "launch_rocket"
    assert event["error"]["code"] == "unknown_type"
    assert len(dead_letters()) == 1


def test_schema_violation_names_the_field(worker: WorkerProcess, pidj: PidjSimulator) -> None:
    """A payload breaking its schema is rejected with the failing field's JSON path; Pidj is not called."""
    with EventTap() as tap:
        command_id = publish_command("send_text", {**SEND, "to_number": 18885553333})
        event = tap.wait_for(command_id)
    assert event["status"] == "rejected"
    assert event["error"]["code"] == "invalid_payload"
    assert event["error"]["details"]["path"] == "/payload/to_number"
    assert pidj.effects() == []
    assert len(dead_letters()) == 1


def test_message_id_must_equal_id(worker: WorkerProcess) -> None:
    """An AMQP message_id different from the body's id is rejected as message_id_mismatch."""
    body = orjson.dumps({"id": "one", "type": "send_text", "payload": SEND})
    with EventTap() as tap:
        publish_raw(
            "send_text",
            body,
            properties=pika.BasicProperties(message_id="two", content_type="application/json"),
        )
        event = tap.wait_for("one")
    assert event["error"]["code"] == "message_id_mismatch"


def test_reply_to_gets_the_event_with_correlation_id(worker: WorkerProcess) -> None:
    """With reply_to set, the terminal event also arrives there, correlation_id = command id."""
    with reply_queue() as (name, get):
        command_id = publish_command("send_text", SEND, reply_to=name)
        properties, event = get(20)
    assert properties.correlation_id == command_id
    assert event["command_id"] == command_id
    assert event["status"] == "succeeded"


def test_same_id_twice_calls_the_vendor_once(worker: WorkerProcess, pidj: PidjSimulator) -> None:
    """A command published twice is sent once; the second copy gets the stored event (same event_id)."""
    with EventTap() as tap:
        publish_command("send_text", SEND, id="twice-1")
        first = tap.wait_for("twice-1")
        publish_command("send_text", SEND, id="twice-1")
        tap.wait_for_count(2)
        events = tap.all_for("twice-1")
    assert [e["event_id"] for e in events] == [first["event_id"]] * 2
    assert len(pidj.effects()) == 1
    assert worker.metric("switchboard_duplicates_total", type="send_text") == 1


def test_same_id_different_payload_is_a_conflict(worker: WorkerProcess, pidj: PidjSimulator) -> None:
    """Reusing an id for a different payload is rejected with idempotency_conflict and sends nothing more."""
    with EventTap() as tap:
        publish_command("send_text", SEND, id="conflict-1")
        tap.wait_for("conflict-1")
        publish_command("send_text", {**SEND, "text_body": "other"}, id="conflict-1")
        events = tap.wait_for_count(2)
    assert events[1]["status"] == "rejected"
    assert events[1]["error"]["code"] == "idempotency_conflict"
    assert len(pidj.effects()) == 1


def test_unknown_account_is_rejected(worker: WorkerProcess) -> None:
    """A command naming an account that is not configured is rejected, not guessed."""
    with EventTap() as tap:
        command_id = publish_command("send_text", SEND, account="nobody")
        event = tap.wait_for(command_id)
    assert event["error"]["code"] == "unknown_account"


def test_log_lines_carry_the_command_and_mask_numbers(worker: WorkerProcess, pidj: PidjSimulator) -> None:
    """Every log line about a command names it (command_id, type, attempt); no phone number appears whole."""
    with EventTap() as tap:
        command_id = publish_command("send_text", SEND)
        tap.wait_for(command_id)
    lines = [orjson.loads(line) for line in worker.logs().splitlines() if line.startswith("{")]
    about = [line for line in lines if line.get("command_id") == command_id]
    assert any(line["event"] == "command finished" for line in about)
    assert all({"type", "attempt"} <= set(line) for line in about)
    assert "8885553333" not in worker.logs()
    assert "8885552222" not in worker.logs()
    assert pidj.token not in worker.logs()
