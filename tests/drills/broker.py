"""The drill's side of the broker: a publisher and an event collector that survive a broker restart.

Both use plain pika (as other services would) and reconnect on any connection
error. The collector reads a durable queue of its own, bound to
``switchboard.events`` before anything is published, so no event is lost while
the broker restarts (an exclusive queue would die with the connection).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pika
import pika.exceptions

from tests.support.amqp import connect

RECONNECT_SECONDS = 0.5


def rabbitmqctl(*args: str, timeout: float = 120.0) -> None:
    """Run rabbitmqctl (``SWITCHBOARD_DRILL_RABBITMQCTL`` may name another node: "rabbitmqctl -n drill@host")."""
    command = shlex.split(os.environ.get("SWITCHBOARD_DRILL_RABBITMQCTL", "rabbitmqctl"))
    subprocess.run([*command, "-q", *args], check=True, capture_output=True, timeout=timeout)


def restart_broker_app(while_down: Callable[[], None] = lambda: None) -> float:
    """``stop_app`` (closes every connection), ``while_down()``, ``start_app``; returns seconds down."""
    started = time.monotonic()
    rabbitmqctl("stop_app")
    try:
        while_down()
    finally:
        rabbitmqctl("start_app")
    return time.monotonic() - started


def wait_for_broker(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect().close()
            return
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(RECONNECT_SECONDS)


def queue_depths(names: Iterable[str]) -> dict[str, int]:
    """Ready messages per queue (a missing queue counts -1)."""
    depths: dict[str, int] = {}
    connection = connect()
    try:
        channel = connection.channel()
        for name in names:
            try:
                depths[name] = channel.queue_declare(name, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                depths[name] = -1
                channel = connection.channel()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()
    return depths


class Publisher(threading.Thread):
    """Publishes (routing key, body, message id) at a steady rate, with confirms, retrying through outages."""

    def __init__(self, messages: list[tuple[str, bytes, str]], rate: float) -> None:
        super().__init__(name="drill-publisher", daemon=True)
        self.messages = messages
        self.rate = rate
        self.published = 0
        self.republished = 0
        """Messages sent again because the broker went away before confirming them."""
        self.error: BaseException | None = None
        self.sent_at: dict[str, float] = {}
        """Message id -> Unix time its first copy was confirmed (where publish-to-outcome latency starts)."""

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the drill, not lost in a thread
            self.error = exc

    def _run(self) -> None:
        started = time.monotonic()
        channel: Any = None
        connection: pika.BlockingConnection | None = None
        for index, (routing_key, body, message_id) in enumerate(self.messages):
            pause = started + index / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            properties = pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=message_id
            )
            tries = 0
            while True:
                try:
                    if connection is None or not connection.is_open:
                        connection = connect()
                        channel = connection.channel()
                        channel.confirm_delivery()
                    channel.basic_publish("switchboard.commands", routing_key, body, properties)
                    break
                except pika.exceptions.AMQPError:
                    # Maybe it arrived, maybe not: sending it again is a duplicate, which the worker must absorb.
                    tries += 1
                    if tries == 1:
                        self.republished += 1
                    connection = None
                    time.sleep(RECONNECT_SECONDS)
            self.sent_at.setdefault(message_id, time.time())
            self.published += 1
        if connection is not None and connection.is_open:
            connection.close()


class EventCollector(threading.Thread):
    """Consumes a durable queue bound to switchboard.events with "#"; keeps every event."""

    def __init__(self, queue: str) -> None:
        super().__init__(name="drill-events", daemon=True)
        self.queue = queue
        self.events: list[dict[str, Any]] = []
        self.reconnects = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.idle = threading.Event()
        """Set whenever the queue was seen empty."""

    def declare(self) -> None:
        """Create the queue and its binding (call before publishing anything)."""
        connection = connect()
        try:
            channel = connection.channel()
            channel.exchange_declare("switchboard.events", "topic", durable=True)
            channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(self.queue, "switchboard.events", "#")
        finally:
            connection.close()

    def delete(self) -> None:
        connection = connect()
        try:
            connection.channel().queue_delete(self.queue)
        finally:
            connection.close()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._consume()
            except (pika.exceptions.AMQPError, OSError):
                self.reconnects += 1
                self.idle.clear()
                time.sleep(RECONNECT_SECONDS)

    def _consume(self) -> None:
        connection = connect()
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1000)
            for method, _, body in channel.consume(self.queue, inactivity_timeout=0.2):
                if method is None:
                    self.idle.set()
                    if self._stopping.is_set():
                        break
                    continue
                self.idle.clear()
                event = orjson.loads(body)
                with self._lock:
                    self.events.append(event)
                channel.basic_ack(method.delivery_tag)
            channel.cancel()
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
