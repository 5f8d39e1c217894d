"""worker.event_properties.EventProperties: the bytes pika's BasicProperties encodes, with less work."""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika.exceptions import ShortStringTooLong

from worker.event_properties import CONTENT_TYPE, PERSISTENT, EventProperties


def _stock(**fields: Any) -> pika.BasicProperties:
    return pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT, **fields)


EVENTS: list[dict[str, Any]] = [
    {"message_id": "0f6e0c9a-1234-4abc-8def-0123456789ab", "correlation_id": "cmd-1", "type": "send_text.succeeded",
     "timestamp": 1_790_000_000},
    {"message_id": "e", "correlation_id": "", "type": "x.failed", "timestamp": 0},  # empty, zero
    {"message_id": "é-ü-✓", "correlation_id": "ид-команды", "type": "t.rejected", "timestamp": 2**63},  # UTF-8
    {"message_id": "m", "correlation_id": "c" * 255, "type": "t.succeeded", "timestamp": 1},  # the longest
    {"message_id": "m", "correlation_id": None, "type": "invalid.rejected", "timestamp": 1},  # unreadable command
    {"message_id": "m", "correlation_id": "c", "type": "t.succeeded", "timestamp": 1,
     "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
    {"message_id": "m", "correlation_id": "c", "type": "t.succeeded", "timestamp": 1,
     "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                 "tracestate": "vendor=ünïcode,other=" + "x" * 300}},  # UTF-8, longer than a short string
    {"message_id": "m", "correlation_id": "c", "type": "t.succeeded", "timestamp": 1, "headers": {}},
    # not text: pika's own encoding
    {"message_id": "m", "correlation_id": "c", "type": "t.succeeded", "timestamp": 1,
     "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "n": 7}},
    {"message_id": "m", "correlation_id": "c", "type": "t.succeeded", "timestamp": 1, "headers": {"b": b"\x00"}},
    {"message_id": "m", "correlation_id": None, "type": "t.rejected", "timestamp": 1, "headers": {"k": "v"}},
]  # fmt: skip


@pytest.mark.parametrize("fields", EVENTS)
def test_encodes_the_bytes_pika_encodes(fields: dict[str, Any]) -> None:
    ours = EventProperties(**fields)
    assert b"".join(ours.encode()) == b"".join(_stock(**fields).encode())
    frame = pika.frame.Header(1, 10, ours).marshal()
    assert frame == pika.frame.Header(1, 10, _stock(**fields)).marshal()
    decoded = pika.BasicProperties()
    decoded.decode(b"".join(ours.encode()))
    assert (decoded.content_type, decoded.delivery_mode) == (CONTENT_TYPE, PERSISTENT)
    assert all(getattr(decoded, name) == value for name, value in fields.items())


def test_whatever_is_set_after_it_is_built_is_encoded_too() -> None:
    """A mandatory publish adds a header, anyone may set a property: pika's own encode then."""
    fields = EVENTS[0]
    ours = EventProperties(**fields)
    ours.headers = {"x-switchboard-publish-tag": 7}
    ours.reply_to = "amq.rabbitmq.reply-to"
    ours.priority = 3
    expected = _stock(
        **fields, headers={"x-switchboard-publish-tag": 7}, reply_to="amq.rabbitmq.reply-to", priority=3
    )
    assert b"".join(ours.encode()) == b"".join(expected.encode())


def test_a_header_added_to_its_table_after_it_is_built_is_encoded_too() -> None:
    ours = EventProperties(
        **EVENTS[0], headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
    ours.headers["x-switchboard-publish-tag"] = 7
    expected = _stock(**EVENTS[0], headers=dict(ours.headers))
    assert b"".join(ours.encode()) == b"".join(expected.encode())


def test_a_value_too_long_for_a_short_string_is_refused_as_pika_refuses_it() -> None:
    fields = {**EVENTS[0], "correlation_id": "c" * 256}
    with pytest.raises(ShortStringTooLong):
        _stock(**fields).encode()
    with pytest.raises(ShortStringTooLong):
        EventProperties(**fields).encode()
    headers = {"k" * 256: "v"}
    with pytest.raises(ShortStringTooLong):
        _stock(**EVENTS[0], headers=headers).encode()
    with pytest.raises(ShortStringTooLong):
        EventProperties(**EVENTS[0], headers=headers).encode()
