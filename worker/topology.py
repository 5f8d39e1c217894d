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

Every quorum queue asks for ``QUORUM_GROUP_SIZE`` replicas; RabbitMQ caps that
at the nodes it has, so one node gets one replica and a cluster of three or
more gets three (a majority survives one node lost).

RabbitMQ versions (3.10 through 4.x): 4.0 gave quorum queues a default
delivery limit of 20. The vendor queues always carry ours; ``switchboard.dead``
must have none, or reading it (every read returns the messages) would drop
dead letters after 20 looks. 4.x takes ``x-delivery-limit: -1`` as "no limit";
3.x has no default limit but treats -1 literally and drops a message on its
first return, so the argument is sent to 4.x only (:func:`for_broker`).
A queue declared before with other arguments cannot be changed by declaring
it again (PRECONDITION_FAILED): :func:`declare` then uses it as it is and
returns a warning saying how to apply the new arguments (a policy).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
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

QUORUM_GROUP_SIZE = 3
"""Replicas per quorum queue (capped by the broker at its node count)."""
UNLIMITED_DELIVERIES = -1
"""RabbitMQ 4.x: no delivery limit. Never sent to 3.x, which would drop on the first return."""

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
                    "x-quorum-initial-group-size": QUORUM_GROUP_SIZE,
                    "x-delivery-limit": delivery_limit,
                    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
                tuple((COMMANDS_EXCHANGE, t, None) for t in sorted(types)),
            )
        )
    replicated = {"x-queue-type": "quorum", "x-quorum-initial-group-size": QUORUM_GROUP_SIZE}
    queues.append(Queue(UNROUTED_QUEUE, dict(replicated), ((UNROUTED_EXCHANGE, "", None),)))
    queues.append(Queue(DEAD_QUEUE, dict(replicated), ((DEAD_LETTER_EXCHANGE, "", None),)))
    for seconds in DELAY_BUCKETS_SECONDS:
        queues.append(
            Queue(
                delay_queue(seconds),
                {
                    # Quorum, like the vendor queues: a classic queue lost confirmed
                    # messages across a broker restart in the crash drill.
                    "x-queue-type": "quorum",
                    "x-quorum-initial-group-size": QUORUM_GROUP_SIZE,
                    "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": COMMANDS_EXCHANGE,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
                ((DELAY_EXCHANGE, "", {"x-match": "all", DELAY_HEADER: f"{seconds}s"}),),
            )
        )
    return Topology(exchanges, tuple(queues))


def broker_major(version: str) -> int:
    """The major version of a broker version string ("3.10.8" -> 3); 0 when unknown."""
    head = version.strip().split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def for_broker(layout: Topology, version: str) -> Topology:
    """``layout`` with what this broker version needs said explicitly.

    On 4.x (and on an unknown version, which is newer than 3.x: every 3.x
    announces its version) ``switchboard.dead`` gets ``x-delivery-limit: -1``
    so its dead letters are never dropped; 3.x has no limit by default and must
    not see -1 (see the module docstring).
    """
    major = broker_major(version)
    if 0 < major < 4:
        return layout
    queues = tuple(
        Queue(q.name, {**q.arguments, "x-delivery-limit": UNLIMITED_DELIVERIES}, q.bindings)
        if q.name == DEAD_QUEUE
        else q
        for q in layout.queues
    )
    return Topology(layout.exchanges, queues)


def existing_queue_warning(queue: Queue, reason: str) -> str:
    """What to tell an operator whose queue was declared with other arguments."""
    text = f"{queue.name} already exists with other arguments ({reason}); using it as it is."
    if queue.name == DEAD_QUEUE and queue.arguments.get("x-delivery-limit") == UNLIMITED_DELIVERIES:
        return (
            f"{text} On RabbitMQ 4.x it keeps the default delivery limit of 20, so dead letters could be "
            "dropped: run rabbitmqctl set_policy switchboard-dead '^switchboard\\.dead$' "
            """'{"delivery-limit":-1}' --apply-to quorum_queues"""
        )
    return (
        f"{text} Replication and delivery limit can be set on it with a policy "
        "(README: RabbitMQ versions), or delete it when empty and declare again."
    )


class Declarer(Protocol):
    """What declaring needs of a channel; pika-async and blocking both fit."""

    async def exchange_declare(
        self, name: str, kind: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> None: ...

    async def queue_declare(
        self,
        name: str,
        *,
        durable: bool = True,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Any: ...

    async def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: dict[str, Any] | None = None
    ) -> None: ...


async def declare(
    channel: Declarer,
    topology: Topology,
    reopen: Callable[[], Awaitable[Declarer]] | None = None,
) -> list[str]:
    """Declare everything; safe to run any number of times, from any worker.

    With ``reopen`` (a new channel: the broker closes one on PRECONDITION_FAILED),
    a queue that exists with other arguments is used as it is and a warning
    for it is returned; without, the error propagates.
    """
    warnings: list[str] = []
    for exchange in topology.exchanges:
        await channel.exchange_declare(
            exchange.name, exchange.kind, durable=True, arguments=exchange.arguments or None
        )
    for queue in topology.queues:
        try:
            await channel.queue_declare(queue.name, durable=True, arguments=queue.arguments or None)
        except Exception as exc:
            reason = str(exc)
            if reopen is None or "inequivalent arg" not in reason:
                raise
            channel = await reopen()
            await channel.queue_declare(queue.name, durable=True, passive=True)
            warnings.append(
                existing_queue_warning(queue, reason.rpartition("PRECONDITION_FAILED - ")[2].rstrip("')"))
            )
        for exchange_name, routing_key, arguments in queue.bindings:
            await channel.queue_bind(queue.name, exchange_name, routing_key, arguments)
    return warnings
