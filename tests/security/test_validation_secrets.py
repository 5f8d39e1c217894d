"""Issue 14 item 9: a write-only field's value (a password) is never echoed by validation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import schemas
from tests.support.amqp import EventTap, drain_queue, publish_command
from tests.support.worker import WorkerProcess
from worker import topology
from worker.validation import SchemaValidator

SECRET = "pw-" + "S3cr3tValue" * 30  # over create_user's maxLength of 256


def test_schema_marks_passwords_write_only() -> None:
    """create_user and update_user declare their password writeOnly (the rule the runtime honours)."""
    for name in ("create_user", "update_user"):
        assert schemas.load(name)["properties"]["password"]["writeOnly"] is True


def test_failing_password_is_not_in_any_message() -> None:
    """A password breaking its own rule is named by path and rule, never by value."""
    validator = SchemaValidator(schemas.load("create_user"), prefix="/payload")
    errors = validator.errors({"username": "ann", "password": SECRET})
    assert errors and errors[0]["path"] == "/payload/password"
    assert "maxLength" in errors[0]["message"]
    assert all("S3cr3tValue" not in e["message"] for e in errors)


def test_password_is_scrubbed_from_an_enclosing_objects_message() -> None:
    """An error about an enclosing object (whose text quotes the object) shows the password as ***."""
    schema = {
        "type": "object",
        "properties": {"password": {"type": "string", "writeOnly": True}},
        "not": {"required": ["c"]},
    }
    errors = SchemaValidator(schema).errors({"password": "hunter2-valid", "c": 1})
    assert errors, "an object with c is refused"
    assert all("hunter2-valid" not in e["message"] for e in errors)


@pytest.fixture
def worker(topology_declared: None) -> Iterator[WorkerProcess]:
    with WorkerProcess({"SWITCHBOARD_VENDORS": "pidj", "SWITCHBOARD_SANDBOX": "true"}) as process:
        yield process


@pytest.mark.integration
def test_rejected_event_dead_letter_and_logs_do_not_echo_the_password(
    broker: None, worker: WorkerProcess
) -> None:
    """Through a real worker: the rejected event, the dead letter's headers and the logs omit the password."""
    username = f"sec-{uuid.uuid4().hex[:8]}"
    with EventTap() as tap:
        command_id = publish_command("create_user", {"username": username, "password": SECRET})
        event = tap.wait_for(command_id, timeout=30)
    assert event["status"] == "rejected"
    assert event["error"]["details"]["path"] == "/payload/password"
    assert "S3cr3tValue" not in str(event)
    dead = [props for props, _ in drain_queue(topology.DEAD_QUEUE) if props.message_id == command_id]
    assert dead, "the rejected command is dead-lettered"
    assert "S3cr3tValue" not in str(dead[0].headers)
    assert "S3cr3tValue" not in worker.logs()
