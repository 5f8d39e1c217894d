"""Stand-ins for the other side of the broker: an observer, a fake worker, a cuttable proxy.

They use plain pika, as another service would, so the client is checked
against the wire rather than against itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pika
from pika.adapters.blocking_connection import BlockingChannel

AMQP_URL = os.environ.get("SWITCHBOARD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

TEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Echo (test only)",
    "type": "object",
    "required": ["to_number", "text"],
    "additionalProperties": False,
    "properties": {
        "to_number": {"type": "string", "pattern": "^\\+[1-9][0-9]{7,14}$", "description": "E.164."},
        "text": {"type": "string", "minLength": 1, "maxLength": 160},
        "tags": {"type": "array", "items": {"type": "string"}},
        "from": {"type": "string", "description": "A Python keyword as a field name."},
        "account": {"type": "string", "description": "Collides with the envelope option."},
    },
}


def reachable(url: str) -> bool:
    params = pika.URLParameters(url)
    try:
        with socket.create_connection((params.host, params.port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Received:
    envelope: dict[str, Any]
    properties: pika.BasicProperties
    routing_key: str


class Observer:
    """An exclusive queue bound to switchboard.commands for one routing key."""

    def __init__(self, url: str, exchange: str, routing_key: str) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self._channel: BlockingChannel = self._connection.channel()
        result = self._channel.queue_declare("", exclusive=True, auto_delete=True)
        self.queue: str = result.method.queue
        self._channel.queue_bind(self.queue, exchange, routing_key)

    def get(self, timeout: float = 5.0) -> Received:
        """The next message, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, properties, body = self._channel.basic_get(self.queue, auto_ack=True)
            if method is not None:
                return Received(orjson.loads(body), properties, method.routing_key)
            self._connection.process_data_events(time_limit=0.05)
        raise AssertionError(f"nothing arrived on {self.queue} within {timeout}s")

    def count(self) -> int:
        return int(self._channel.queue_declare(self.queue, passive=True).method.message_count)

    def close(self) -> None:
        self._connection.close()


Answer = Callable[[dict[str, Any], int], list[dict[str, Any]]]
"""(command envelope, how many times this id was seen) -> events to send to reply_to."""


def terminal(envelope: dict[str, Any], status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    """A terminal event for ``envelope`` shaped like the worker's."""
    return {
        "event_id": str(uuid.uuid4()),
        "command_id": envelope["id"],
        "type": envelope["type"],
        "status": status,
        "result": {"echo": envelope["payload"]},
        "attempts": 1,
        "occurred_at": "2026-01-01T00:00:00Z",
        "duration_ms": 1.0,
        "meta": envelope.get("meta", {}),
        **extra,
    }


@dataclass
class Responder:
    """A stand-in worker: consumes one routing key and answers on reply_to."""

    url: str
    exchange: str
    routing_key: str
    answer: Answer
    queue: str | None = None
    """An existing queue to consume; by default a new one bound to ``routing_key``."""
    seen: dict[str, int] = field(default_factory=dict)
    reply_queues: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "responder did not start"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        queue = self.queue
        if queue is None:
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, self.exchange, self.routing_key)
        channel.basic_consume(queue, self._on_message, auto_ack=True)
        self._ready.set()
        try:
            while not self._stop.is_set():
                connection.process_data_events(time_limit=0.05)
        finally:
            connection.close()

    def _on_message(
        self, channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        envelope = orjson.loads(body)
        self.seen[envelope["id"]] = self.seen.get(envelope["id"], 0) + 1
        if properties.reply_to:
            self.reply_queues.append(properties.reply_to)
        for event in self.answer(envelope, self.seen[envelope["id"]]):
            if properties.reply_to:
                channel.basic_publish(
                    "",
                    properties.reply_to,
                    orjson.dumps(event),
                    pika.BasicProperties(content_type="application/json", correlation_id=envelope["id"]),
                )


class Proxy:
    """A TCP forwarder to the broker whose live connections can be cut, like a network blip."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self.accepted += 1
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every live connection; new ones are still accepted."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.cut()
