"""What a quorum queue holds in its at-least-once dead-lettering hop is seen by the drill's check.

A wait queue dead-letters an expired command back to ``switchboard.commands``; until the target
queue confirms it, the source quorum queue keeps it, in no ready count (``queue.declare`` says 0).
The cluster drill counts those too (:func:`tests.cluster.cluster.held_dead_letters`), so a command
stuck there shows as a queue left, not as a silent loss.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pika
import pytest

from tests.cluster import cluster
from tests.support import amqp

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture
def channel(cluster_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    with amqp.use_broker(cluster_url):
        connection = amqp.connect()
    try:
        yield connection.channel()
    finally:
        connection.close()


def test_a_held_dead_letter_is_counted_though_the_queue_looks_empty(
    cluster_url: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    """An expired message whose dead-letter exchange is missing stays held: 1 held, 0 ready."""
    name = f"switchboard.test.held.{os.getpid()}"
    channel.queue_declare(
        name,
        durable=True,
        arguments={
            # As the wait queues are declared (worker/topology.py), but with nowhere to go.
            "x-queue-type": "quorum",
            "x-message-ttl": 100,
            "x-dead-letter-exchange": f"{name}.missing",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    try:
        channel.confirm_delivery()
        channel.basic_publish("", name, b"held", pika.BasicProperties(delivery_mode=2))
        vhost = cluster.vhost_of(cluster_url)
        deadline = time.monotonic() + 60
        while (held := cluster.held_dead_letters([name], vhost)) != {name: 1}:
            assert time.monotonic() < deadline, held
            time.sleep(0.5)
        assert channel.queue_declare(name, passive=True).method.message_count == 0
    finally:
        channel.queue_delete(name)


def test_a_held_dead_letter_goes_on_within_seconds_once_it_can(
    cluster_url: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    """A dead letter nothing could take is sent again within seconds once it can (the nodes' advanced.config),
    not after RabbitMQ's default 180 s: the short drill lost commands refused while a leader was elected."""
    name = f"switchboard.test.retried.{os.getpid()}"
    target = f"{name}.target"
    channel.queue_declare(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-message-ttl": 100,
            "x-dead-letter-exchange": target,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    try:
        channel.confirm_delivery()
        channel.basic_publish("", name, b"retried", pika.BasicProperties(delivery_mode=2))
        vhost = cluster.vhost_of(cluster_url)
        deadline = time.monotonic() + 60
        while cluster.held_dead_letters([name], vhost) != {name: 1}:
            assert time.monotonic() < deadline, "the expired message was never held"
            time.sleep(0.5)
        channel.exchange_declare(target, "fanout", durable=True)
        channel.queue_declare(target, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(target, target)
        taken_at = time.monotonic()
        # Two retry periods at most (the broker's timer, then the message's own wait).
        deadline = taken_at + 3 * cluster.DEAD_LETTER_RETRY_MS / 1000
        while (depth := channel.queue_declare(target, passive=True).method.message_count) == 0:
            assert time.monotonic() < deadline, cluster.held_dead_letters([name], vhost)
            time.sleep(0.2)
        assert depth == 1
        assert cluster.held_dead_letters([name], vhost) == {name: 0}
    finally:
        channel.queue_delete(name)
        channel.queue_delete(target)
        channel.exchange_delete(target)
