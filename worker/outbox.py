"""Everything the worker publishes, each awaited until the broker confirms.

- events to ``switchboard.events`` (and to the command's ``reply_to``),
- copies of failed/rejected messages to ``switchboard.dead`` with the reason,
- commands sent back through a delay queue (retry, deferral, continuation).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pika

from worker import topology, tracing
from worker.amqp import PUBLISH_TAG_HEADER, Channel, Confirmed, ConnectionLost
from worker.event_properties import PERSISTENT, EventProperties

# Headers the runtime puts on a command it sends back through a delay queue.
H_ATTEMPT = "x-switchboard-attempts"
H_FIRST_SEEN = "x-switchboard-first-seen"  # Unix milliseconds (AMQP tables have no floats in pika)
H_NOT_BEFORE = "x-switchboard-not-before"  # Unix milliseconds
H_REASON = "x-switchboard-delay-reason"
# Headers of a dead-lettered copy.
H_DEAD_STATUS = "x-switchboard-status"
H_DEAD_ERROR = "x-switchboard-error"
H_DEAD_EVENT_ID = "x-switchboard-event-id"
H_DEAD_ROUTING_KEY = "x-switchboard-routing-key"
H_DEAD_AT = "x-switchboard-dead-at"
RUNTIME_HEADERS = frozenset(
    {
        H_ATTEMPT,
        H_FIRST_SEEN,
        H_NOT_BEFORE,
        H_REASON,
        H_DEAD_STATUS,
        H_DEAD_ERROR,
        H_DEAD_EVENT_ID,
        H_DEAD_ROUTING_KEY,
        H_DEAD_AT,
        topology.DELAY_HEADER,
    }
)


def amqp_safe(headers: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``headers`` that pika can encode again (it decodes floats it cannot encode)."""
    safe: dict[str, Any] = {}
    for key, value in (headers or {}).items():
        if isinstance(value, float):
            safe[key] = repr(value)
        elif isinstance(value, dict):
            safe[key] = amqp_safe(value)
        elif isinstance(value, list):
            safe[key] = [
                amqp_safe(v) if isinstance(v, dict) else repr(v) if isinstance(v, float) else v for v in value
            ]
        else:
            safe[key] = value
    return safe


def _carried(original: pika.spec.BasicProperties) -> dict[str, Any]:
    """The headers a new copy of a command keeps. Not the broker's redelivery
    count: it belongs to the message being acked, and would make the copy look
    poisoned."""
    headers = amqp_safe(original.headers)
    headers.pop("x-delivery-count", None)
    headers.pop(PUBLISH_TAG_HEADER, None)  # belongs to the publish that made this copy
    return headers


def _copy(original: pika.spec.BasicProperties, headers: dict[str, Any]) -> pika.BasicProperties:
    """A persistent copy of a command's properties with new headers."""
    return pika.BasicProperties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        delivery_mode=PERSISTENT,
        message_id=original.message_id,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        type=original.type,
        headers=headers,
    )


class Outbox:
    """Publishes on the current confirm channel (it changes on reconnect)."""

    def __init__(self, channel: Callable[[], Channel | None]) -> None:
        self._channel = channel

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        *,
        mandatory: bool = False,
        then: Confirmed | None = None,
    ) -> asyncio.Future[None]:
        channel = self._channel()
        if channel is None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_exception(ConnectionLost("not connected to the broker"))
            return future
        return channel.publish(exchange, routing_key, body, properties, mandatory=mandatory, then=then)

    async def event(
        self,
        body: bytes,
        *,
        routing_key: str,
        event_id: str,
        command_id: str | None,
        reply_to: str | None = None,
        headers: dict[str, Any] | None = None,
        then: Confirmed | None = None,
    ) -> None:
        """Publish an event, and to ``reply_to`` too when given (``then`` is called on each confirm)."""
        headers = dict(headers or {})
        if not tracing.state.enabled:
            await self._publish_event(body, routing_key, event_id, command_id, reply_to, headers, then)
            return
        with tracing.publish_span(topology.EVENTS_EXCHANGE, routing_key, event_id, headers):
            await self._publish_event(body, routing_key, event_id, command_id, reply_to, headers, then)

    async def _publish_event(
        self,
        body: bytes,
        routing_key: str,
        event_id: str,
        command_id: str | None,
        reply_to: str | None,
        headers: dict[str, Any],
        then: Confirmed | None,
    ) -> None:
        properties = EventProperties(
            message_id=event_id,
            correlation_id=command_id,
            type=routing_key,
            timestamp=int(time.time()),
            headers=headers or None,
        )
        published = self._publish(topology.EVENTS_EXCHANGE, routing_key, body, properties, then=then)
        if not reply_to:
            await published
            return
        await asyncio.gather(published, self._publish("", reply_to, body, properties, then=then))

    async def dead_letter(
        self,
        body: bytes,
        original: pika.spec.BasicProperties,
        *,
        routing_key: str,
        status: str,
        error: dict[str, Any],
        event_id: str,
        then: Confirmed | None = None,
    ) -> None:
        """Keep the original message in ``switchboard.dead`` with why it ended there."""
        headers = {k: v for k, v in _carried(original).items() if k not in RUNTIME_HEADERS}
        headers.update(
            {
                H_DEAD_STATUS: status,
                H_DEAD_ERROR: orjson.dumps(error).decode(),
                H_DEAD_EVENT_ID: event_id,
                H_DEAD_ROUTING_KEY: routing_key,
                H_DEAD_AT: datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
        )
        properties = _copy(original, headers)
        await self._publish(
            topology.DEAD_LETTER_EXCHANGE, routing_key, body, properties, mandatory=True, then=then
        )

    async def delay(
        self,
        body: bytes,
        original: pika.spec.BasicProperties,
        *,
        routing_key: str,
        seconds: float,
        headers: dict[str, Any],
        then: Confirmed | None = None,
    ) -> None:
        """Send the command back to ``switchboard.commands`` after ``seconds``.

        Waits longer than the longest delay queue hop through it again:
        ``x-switchboard-not-before`` tells the worker to send it back once more.
        """
        bucket = topology.delay_bucket(seconds)
        merged = _carried(original)
        merged.update(headers)
        merged[topology.DELAY_HEADER] = f"{bucket}s"
        merged[H_NOT_BEFORE] = int((time.time() + seconds) * 1000)
        properties = _copy(original, merged)
        # Mandatory: a copy that reached no wait queue must not let the original be acked.
        await self._publish(topology.DELAY_EXCHANGE, routing_key, body, properties, mandatory=True, then=then)
