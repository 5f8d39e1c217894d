"""An event's AMQP properties, encoded without pika's walk over all fourteen.

pika's ``BasicProperties`` sets fourteen attributes when built and, when encoded,
tests each, asserts its type and encodes it through a helper: about 30k instructions
for an event's properties, a sixth of what the dispatcher itself spends on a
command. An event always carries the same six (content type, delivery mode,
correlation id, message id, timestamp, type): :class:`EventProperties` holds the
four that vary, leaves the rest to class defaults, and encodes the six by joining
their bytes; headers whose values are all ``str`` (the ``traceparent`` and
``tracestate`` a traced command's events carry) are joined the same way. Anything
else set on it (a header that is not text, as a mandatory publish adds; a reply
queue), a missing correlation id (an unreadable command's rejection) or a value
that is not ``str`` takes pika's own ``encode``. The bytes are the same either way
(``tests/unit/test_event_properties.py``).
"""

from __future__ import annotations

import struct
from typing import Any

import pika
from pika.exceptions import ShortStringTooLong

CONTENT_TYPE = "application/json"
PERSISTENT = 2

_FLAGS = (
    pika.BasicProperties.FLAG_CONTENT_TYPE
    | pika.BasicProperties.FLAG_DELIVERY_MODE
    | pika.BasicProperties.FLAG_CORRELATION_ID
    | pika.BasicProperties.FLAG_MESSAGE_ID
    | pika.BasicProperties.FLAG_TIMESTAMP
    | pika.BasicProperties.FLAG_TYPE
)
# The flags, the content type and the delivery mode: the same bytes for every event.
_PREFIX = struct.pack(">HB", _FLAGS, len(CONTENT_TYPE)) + CONTENT_TYPE.encode() + struct.pack("B", PERSISTENT)
# With headers: their table goes between the content type and the delivery mode.
_PREFIX_WITH_HEADERS = struct.pack(">HB", _FLAGS | pika.BasicProperties.FLAG_HEADERS, len(CONTENT_TYPE)) + (
    CONTENT_TYPE.encode()
)
_DELIVERY_MODE = struct.pack("B", PERSISTENT)
_TIMESTAMP = struct.Struct(">Q")
_LONG = struct.Struct(">I")
_LENGTHS = [bytes((length,)) for length in range(256)]


def _short_string(value: str) -> bytes:
    """An AMQP short string, as ``pika.data.encode_short_string`` writes it (and refuses it)."""
    encoded = value.encode("utf-8")
    if len(encoded) > 255:
        raise ShortStringTooLong(encoded)
    return _LENGTHS[len(encoded)] + encoded


def _text_table(table: dict[str, Any]) -> bytes | None:
    """An AMQP field table of text values, as ``pika.data.encode_table`` writes it; None for any other value."""
    pieces: list[bytes] = []
    for key, value in table.items():
        if type(key) is not str or type(value) is not str:
            return None
        encoded = value.encode("utf-8")
        pieces += (_short_string(key), b"S", _LONG.pack(len(encoded)), encoded)
    joined = b"".join(pieces)
    return _LONG.pack(len(joined)) + joined


class EventProperties(pika.BasicProperties):  # type: ignore[misc]  # pika has no type hints
    """``BasicProperties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT, ...)`` of one event."""

    content_type = CONTENT_TYPE
    delivery_mode = PERSISTENT
    content_encoding = headers = priority = correlation_id = reply_to = expiration = None
    message_id = timestamp = type = user_id = app_id = cluster_id = None

    def __init__(
        self,
        *,
        message_id: str,
        correlation_id: str | None,
        type: str,
        timestamp: int,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.type = type
        self.timestamp = timestamp
        if headers is not None:
            self.headers = headers

    def encode(self) -> list[bytes]:
        fields = self.__dict__
        headers = (
            _text_table(fields["headers"])
            if len(fields) == 5 and type(fields.get("headers")) is dict
            else None
        )
        if (
            len(fields) != (4 if headers is None else 5)  # anything else set besides these: pika's way
            or type(fields["correlation_id"]) is not str
            or type(fields["message_id"]) is not str
            or type(fields["type"]) is not str
            or type(fields["timestamp"]) is not int
        ):
            encoded: list[bytes] = super().encode()
            return encoded
        tail = [
            _short_string(fields["correlation_id"]),
            _short_string(fields["message_id"]),
            _TIMESTAMP.pack(fields["timestamp"]),
            _short_string(fields["type"]),
        ]
        if headers is None:
            return [_PREFIX, *tail]
        return [_PREFIX_WITH_HEADERS, headers, _DELIVERY_MODE, *tail]
