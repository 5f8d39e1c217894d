"""Shared fixtures: the real broker, cleaned before each integration test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pika
import pytest

from tests.support.amqp import AMQP_URL, connect, delete_vhost, ensure_vhost
from tests.support.worker import SWITCHBOARD

SWITCHBOARD_QUEUES_PREFIX = "switchboard."


def _declare_topology() -> None:
    ensure_vhost()
    env = {**os.environ, "SWITCHBOARD_AMQP_URL": AMQP_URL}
    subprocess.run(
        [str(SWITCHBOARD), "topology", "declare"], check=True, capture_output=True, timeout=60, env=env
    )


def _purge_switchboard_queues() -> None:
    from worker import topology

    connection = connect()
    try:
        channel = connection.channel()
        names = ["switchboard.pidj", "switchboard.peerly", topology.DEAD_QUEUE, topology.UNROUTED_QUEUE]
        names += [topology.delay_queue(s) for s in topology.DELAY_BUCKETS_SECONDS]
        for name in names:
            try:
                channel.queue_purge(name)
            except pika.exceptions.ChannelClosedByBroker:
                channel = connection.channel()
    finally:
        connection.close()


@pytest.fixture(scope="session")
def topology_declared() -> Iterator[None]:
    _declare_topology()
    yield
    delete_vhost()


@pytest.fixture
def broker(topology_declared: None) -> Iterator[None]:
    """The real RabbitMQ with Switchboard's topology, its queues empty."""
    _purge_switchboard_queues()
    yield
    _purge_switchboard_queues()
