"""Plain pika, as another service would publish and listen; not our own client."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pika

from worker.brokers import blocking_connection

# Tests use a vhost of their own, so a worker someone runs by hand (or `make bench`)
# on the same broker never takes a test's messages.
# One vhost per test process, so parallel runs (CI, a colleague, a drill) never mix either.
TEST_VHOST = f"switchboard-test-{os.getpid()}"
AMQP_URL = os.environ.get("SWITCHBOARD_TEST_AMQP_URL", f"amqp://guest:guest@127.0.0.1:5672/{TEST_VHOST}")


def ensure_vhost() -> None:
    """Create the test vhost (rabbitmqctl is on the broker's machine)."""
    if "SWITCHBOARD_TEST_AMQP_URL" in os.environ:
        return
    for args in (["add_vhost", TEST_VHOST], ["set_permissions", "-p", TEST_VHOST, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)


def delete_vhost() -> None:
    """Remove the test vhost and everything in it."""
    if "SWITCHBOARD_TEST_AMQP_URL" in os.environ:
        return
    subprocess.run(
        ["rabbitmqctl", "-q", "delete_vhost", TEST_VHOST], capture_output=True, timeout=60, check=False
    )


TERMINAL = frozenset({"succeeded", "failed", "rejected"})


def connect() -> pika.BlockingConnection:
    """A connection to the test broker: one node, or any node of a cluster (comma-separated URL)."""
    return blocking_connection(AMQP_URL)


@contextmanager
def use_broker(url: str) -> Iterator[None]:
    """Point these helpers (and drills) at another broker, e.g. the local cluster, for a while."""
    global AMQP_URL
    before, AMQP_URL = AMQP_URL, url
    try:
        yield
    finally:
        AMQP_URL = before


def publish_raw(
    routing_key: str,
    body: bytes,
    *,
    exchange: str = "switchboard.commands",
    properties: pika.BasicProperties | None = None,
) -> None:
    """Publish bytes as they are, with confirms."""
    connection = connect()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange,
            routing_key,
            body,
            properties or pika.BasicProperties(content_type="application/json", delivery_mode=2),
        )
    finally:
        connection.close()


def command_body(
    command_type: str,
    payload: dict[str, Any],
    *,
    id: str | None = None,
    account: str | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    command_id = id or str(uuid.uuid4())
    envelope: dict[str, Any] = {"id": command_id, "type": command_type, "payload": payload}
    if account is not None:
        envelope["account"] = account
    if meta is not None:
        envelope["meta"] = meta
    return command_id, orjson.dumps(envelope)


def publish_command(
    command_type: str,
    payload: dict[str, Any],
    *,
    id: str | None = None,
    account: str | None = None,
    meta: dict[str, Any] | None = None,
    reply_to: str | None = None,
) -> str:
    """Publish a command the way the README tells other services to; returns its id."""
    command_id, body = command_body(command_type, payload, id=id, account=account, meta=meta)
    publish_raw(
        command_type,
        body,
        properties=pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=command_id, reply_to=reply_to
        ),
    )
    return command_id


class EventTap:
    """An exclusive queue bound to switchboard.events: collects every event."""

    def __init__(self, pattern: str = "#") -> None:
        self.pattern = pattern
        self.events: list[dict[str, Any]] = []
        self.raw: list[tuple[pika.spec.Basic.Deliver, pika.BasicProperties, bytes]] = []

    def __enter__(self) -> EventTap:
        self.connection = connect()
        self.channel = self.connection.channel()
        self.channel.exchange_declare("switchboard.events", "topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.channel.queue_bind(self.queue, "switchboard.events", self.pattern)
        return self

    def __exit__(self, *_: object) -> None:
        if self.connection.is_open:
            self.connection.close()

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is not None:
                self.raw.append((method, properties, body))
                self.events.append(orjson.loads(body))
                continue
            if time.monotonic() >= deadline:
                return
            self.connection.process_data_events(time_limit=min(0.05, max(0.0, deadline - time.monotonic())))

    def all_for(self, command_id: str) -> list[dict[str, Any]]:
        self._drain(0)
        return [e for e in self.events if e.get("command_id") == command_id]

    def wait_for(
        self, command_id: str, *, timeout: float = 20.0, statuses: frozenset[str] = TERMINAL
    ) -> dict[str, Any]:
        """The first event for ``command_id`` with one of ``statuses``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("command_id") == command_id and event.get("status") in statuses:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [
                    (e.get("type"), e.get("status")) for e in self.events if e.get("command_id") == command_id
                ]
                raise AssertionError(
                    f"no {sorted(statuses)} event for {command_id} within {timeout}s; saw {seen}"
                )
            self._drain(min(0.2, remaining))

    def wait_for_count(
        self, count: int, *, timeout: float = 60.0, statuses: frozenset[str] = TERMINAL
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events with ``statuses`` arrived; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [e for e in self.events if e.get("status") in statuses]
            if len(matching) >= count:
                return matching
            if time.monotonic() >= deadline:
                raise AssertionError(f"{len(matching)} of {count} events within {timeout}s")
            self._drain(0.2)

    def wait_for_routing_key(self, routing_key: str, *, timeout: float = 20.0) -> dict[str, Any]:
        """The first event published with ``routing_key``."""
        deadline = time.monotonic() + timeout
        while True:
            for method, _, body in self.raw:
                if method.routing_key == routing_key:
                    return dict(orjson.loads(body))
            if time.monotonic() >= deadline:
                raise AssertionError(f"no event with routing key {routing_key} within {timeout}s")
            self._drain(0.2)


@contextmanager
def reply_queue() -> Iterator[tuple[str, Any]]:
    """An exclusive queue to use as ``reply_to``; yields (name, get) where get(timeout) returns (props, event)."""
    connection = connect()
    channel = connection.channel()
    name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue

    def get(timeout: float = 20.0) -> tuple[pika.BasicProperties, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(name, auto_ack=True)
            if method is not None:
                return properties, orjson.loads(body)
            connection.process_data_events(time_limit=0.1)
        raise AssertionError(f"nothing arrived on {name} within {timeout}s")

    try:
        yield name, get
    finally:
        if connection.is_open:
            connection.close()


def queue_depth(queue: str) -> int:
    connection = connect()
    try:
        count: int = connection.channel().queue_declare(queue, passive=True).method.message_count
        return count
    finally:
        connection.close()


def drain_queue(queue: str, limit: int = 100000) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take (and ack) every message of ``queue``."""
    connection = connect()
    taken = []
    try:
        channel = connection.channel()
        for _ in range(limit):
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            taken.append((properties, body))
    finally:
        connection.close()
    return taken
