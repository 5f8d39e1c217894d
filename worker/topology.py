"""Exchanges and queues: the names other services rely on, declared idempotently.

::

    publisher --(routing key = type)--> switchboard.commands (topic)
        |-- send_text, ...     --> switchboard.pidj    (quorum)
        |-- upload_list, ...   --> switchboard.peerly  (quorum)
        '-- anything else (alternate exchange)
                               --> switchboard.unrouted --> rejected "unknown_type"
    waiting:   switchboard.wait (headers) --> switchboard.wait.<n>s (quorum, TTL n s)
               --(dead-letter, same routing key)--> switchboard.commands
               (retries, deferrals, continuations; the old names switchboard.delay*
               were classic queues and are no longer used)
    outcomes:  switchboard.events (topic), routing key <type>.<status>
    kept:      switchboard.dlx (fanout) --> switchboard.dead

One quorum queue per vendor, so one vendor's outage never stalls the other.
The vendor queues dead-letter to ``switchboard.dlx`` themselves when a message
is delivered more than ``delivery_limit`` times (a poison message that crashes
every worker that takes it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

COMMANDS_EXCHANGE = "switchboard.commands"
EVENTS_EXCHANGE = "switchboard.events"
DELAY_EXCHANGE = "switchboard.wait"
DEAD_LETTER_EXCHANGE = "switchboard.dlx"
UNROUTED_EXCHANGE = "switchboard.unrouted"
DEAD_QUEUE = "switchboard.dead"
UNROUTED_QUEUE = "switchboard.unrouted"
DELAY_HEADER = "switchboard-wait"
"""The header a headers exchange routes on. Not ``x-``: RabbitMQ ignores
``x-`` headers when matching, which would copy every message to every queue."""

DELAY_BUCKETS_SECONDS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Each bucket is one queue with a fixed TTL: per-message TTLs would wait
behind the message at the head of the queue."""


def vendor_queue(vendor: str) -> str:
    return f"switchboard.{vendor}"


def delay_queue(seconds: int) -> str:
    return f"switchboard.wait.{seconds}s"


def delay_bucket(seconds: float) -> int:
    """The bucket to wait in: the shortest one not shorter than ``seconds``
    (so a vendor's Retry-After is always honoured), capped at the longest."""
    for bucket in DELAY_BUCKETS_SECONDS:
        if bucket >= seconds:
            return bucket
    return DELAY_BUCKETS_SECONDS[-1]


@dataclass(frozen=True)
class Exchange:
    name: str
    kind: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[tuple[str, str, dict[str, Any] | None], ...] = ()
    """(exchange, routing key, binding arguments)"""


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]


def build(vendor_types: dict[str, Iterable[str]], *, delivery_limit: int = 20) -> Topology:
    """The whole topology for ``vendor -> command types``."""
    exchanges = (
        Exchange(COMMANDS_EXCHANGE, "topic", {"alternate-exchange": UNROUTED_EXCHANGE}),
        Exchange(EVENTS_EXCHANGE, "topic"),
        Exchange(DELAY_EXCHANGE, "headers"),
        Exchange(DEAD_LETTER_EXCHANGE, "fanout"),
        Exchange(UNROUTED_EXCHANGE, "fanout"),
    )
    queues: list[Queue] = []
    for vendor, types in sorted(vendor_types.items()):
        queues.append(
            Queue(
                vendor_queue(vendor),
                {
                    "x-queue-type": "quorum",
                    "x-delivery-limit": delivery_limit,
                    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
                tuple((COMMANDS_EXCHANGE, t, None) for t in sorted(types)),
            )
        )
    queues.append(Queue(UNROUTED_QUEUE, {"x-queue-type": "quorum"}, ((UNROUTED_EXCHANGE, "", None),)))
    queues.append(Queue(DEAD_QUEUE, {"x-queue-type": "quorum"}, ((DEAD_LETTER_EXCHANGE, "", None),)))
    for seconds in DELAY_BUCKETS_SECONDS:
        queues.append(
            Queue(
                delay_queue(seconds),
                {
                    # Quorum, like the vendor queues: a classic queue lost confirmed
                    # messages across a broker restart in the crash drill.
                    "x-queue-type": "quorum",
                    "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": COMMANDS_EXCHANGE,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
                ((DELAY_EXCHANGE, "", {"x-match": "all", DELAY_HEADER: f"{seconds}s"}),),
            )
        )
    return Topology(exchanges, tuple(queues))


class Declarer(Protocol):
    """What declaring needs of a channel; pika-async and blocking both fit."""

    async def exchange_declare(
        self, name: str, kind: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> None: ...

    async def queue_declare(
        self, name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> Any: ...

    async def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: dict[str, Any] | None = None
    ) -> None: ...


async def declare(channel: Declarer, topology: Topology) -> None:
    """Declare everything; safe to run any number of times, from any worker."""
    for exchange in topology.exchanges:
        await channel.exchange_declare(
            exchange.name, exchange.kind, durable=True, arguments=exchange.arguments or None
        )
    for queue in topology.queues:
        await channel.queue_declare(queue.name, durable=True, arguments=queue.arguments or None)
        for exchange_name, routing_key, arguments in queue.bindings:
            await channel.queue_bind(queue.name, exchange_name, routing_key, arguments)
