"""A confirm is not a route: a mandatory publish that reaches no queue fails, on the real broker."""

from __future__ import annotations

import uuid

import pika
import pytest

from tests.support.amqp import AMQP_URL
from worker.amqp import Connection, PublishReturned

pytestmark = pytest.mark.integration


async def test_unroutable_mandatory_publish_fails_and_a_routed_one_succeeds(topology_declared: None) -> None:
    """The broker confirms an unroutable message; with mandatory=True the publish still fails."""
    connection = await Connection.connect(AMQP_URL, name="switchboard-test-returns")
    try:
        channel = await connection.channel()
        await channel.enable_confirms()
        exchange = f"test.returns.{uuid.uuid4().hex[:8]}"
        await channel.exchange_declare(exchange, "direct", durable=False)
        queue = await channel.queue_declare("", durable=False, exclusive=True)
        await channel.queue_bind(queue.method.queue, exchange, "routed")
        properties = pika.BasicProperties(delivery_mode=2)
        with pytest.raises(PublishReturned):
            await channel.publish(exchange, "nowhere", b"{}", properties, mandatory=True)
        await channel.publish(exchange, "routed", b"{}", pika.BasicProperties(), mandatory=True)
        await channel.publish(exchange, "nowhere", b"{}", pika.BasicProperties())  # not mandatory: dropped
    finally:
        await connection.close()
