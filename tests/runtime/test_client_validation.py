"""The publishing client and the worker refuse a bad command with the same error (issue 16, item 8)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.runtime.conftest import SEND
from tests.support.amqp import AMQP_URL
from tests.support.worker import WorkerProcess
from worker.client import Switchboard
from worker.errors import CommandRejected

pytestmark = pytest.mark.integration

BAD = [
    pytest.param("send_text", {**SEND, "to_number": "555"}, id="schema-pattern"),
    pytest.param("send_text", {**SEND, "to_number": "+15555553333"}, id="check-invalid-number"),
    pytest.param("send_text", {**SEND, "txet": "x"}, id="schema-unknown-field"),
    pytest.param("send_text", {"to_number": "+18885553333", "text_body": "hi"}, id="check-exactly-one"),
    pytest.param("get_contact", {"id": 7}, id="schema-type"),
]


@pytest.mark.parametrize(("command_type", "payload"), BAD)
def test_client_error_is_the_workers_rejection(
    worker: WorkerProcess, command_type: str, payload: dict[str, Any]
) -> None:
    """What the client raises before publishing equals the error of the worker's rejected event."""
    with Switchboard(AMQP_URL) as checking, pytest.raises(CommandRejected) as caught:
        checking.send(command_type, payload)
    with Switchboard(AMQP_URL, validate=False) as unchecked:
        event = unchecked.call(command_type, payload, timeout=20)
    assert event["status"] == "rejected"
    assert caught.value.as_event_error() == event["error"]
