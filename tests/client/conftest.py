"""Fixtures for the publisher client tests (the fakes themselves are in broker_fakes.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from tests.client.broker_fakes import AMQP_URL, TEST_SCHEMA, Answer, Observer, Proxy, Responder, reachable
from worker import topology


@pytest.fixture(scope="session")
def amqp_url() -> str:
    if not reachable(AMQP_URL):
        pytest.skip(f"no RabbitMQ at {pika.URLParameters(AMQP_URL).host}:{pika.URLParameters(AMQP_URL).port}")
    return AMQP_URL


@pytest.fixture(scope="session")
def commands_exchange(amqp_url: str) -> str:
    """Declare switchboard.commands exactly as the worker does (same arguments, or the broker refuses)."""
    exchange = next(e for e in topology.build({}).exchanges if e.name == topology.COMMANDS_EXCHANGE)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().exchange_declare(
            exchange.name, exchange.kind, durable=True, arguments=exchange.arguments or None
        )
    finally:
        connection.close()
    return exchange.name


@pytest.fixture
def command_type() -> str:
    """A command type no one else binds: tests running side by side see only their messages."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def payload_schemas(command_type: str) -> dict[str, dict[str, Any]]:
    return {command_type: TEST_SCHEMA}


@pytest.fixture
def observer(amqp_url: str, commands_exchange: str, command_type: str) -> Iterator[Observer]:
    watcher = Observer(amqp_url, commands_exchange, command_type)
    yield watcher
    watcher.close()


@pytest.fixture
def responder(
    amqp_url: str, commands_exchange: str, command_type: str
) -> Iterator[Callable[[Answer], Responder]]:
    started: list[Responder] = []

    def start(answer: Answer) -> Responder:
        fake = Responder(amqp_url, commands_exchange, command_type, answer)
        fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[Proxy]:
    params = pika.URLParameters(amqp_url)
    forwarder = Proxy((params.host, params.port))
    yield forwarder
    forwarder.close()


@pytest.fixture
def proxied_url(amqp_url: str, proxy: Proxy) -> str:
    params = pika.URLParameters(amqp_url)
    vhost = params.virtual_host.replace("/", "%2F")
    return (
        f"amqp://{params.credentials.username}:{params.credentials.password}@127.0.0.1:{proxy.port}/{vhost}"
    )
