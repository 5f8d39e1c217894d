"""Live workers, registered in the store, and the start-up check that uses them.

Each worker writes ``worker:<id>`` (host, pid, the vendors it consumes) into
the store's operator controls with a short expiry and renews it every few
seconds, so the store knows which workers share it. No schema change: the
controls already hold small JSON values with an expiry in every backend, and
the control reader ignores kinds it does not know.

The check: a SQLite store is local to one machine. If a vendor's queue already
has more consumers than the live workers this store knows of, some other
worker keeps its own idempotency records, and commands published twice could
be sent twice (once per store). The worker then refuses to start, unless
``SWITCHBOARD_ALLOW_UNSHARED_STORE`` says that is intended. Workers on one
machine sharing one SQLite file all see each other, so they start fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

from worker.amqp import Channel
from worker.config import ConfigError
from worker.logging import get_logger
from worker.store.base import ControlStore

log = get_logger("switchboard.membership")

KEY_PREFIX = "worker:"
HEARTBEAT_SECONDS = 5.0
LIVE_SECONDS = 20.0
"""A worker not heard of for this long counts as gone (a few missed heartbeats)."""
LOCAL_BACKENDS = frozenset({"sqlite"})
"""Stores that live on one machine: only workers there can share them."""


class Membership:
    """This worker's entry in the store, renewed until it leaves."""

    def __init__(self, store: ControlStore, vendors: Iterable[str]) -> None:
        self.store = store
        self.worker_id = uuid.uuid4().hex
        self.entry: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "vendors": sorted(vendors),
            "started_at": time.time(),
        }

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.worker_id

    async def heartbeat(self) -> None:
        now = time.time()
        await self.store.put_control(self.key, {**self.entry, "seen_at": now}, now + LIVE_SECONDS)

    async def run(self) -> None:
        """Renew forever; a store hiccup only warns (the entry lives ``LIVE_SECONDS``)."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.heartbeat()
            except Exception:
                log.warning("could not renew this worker's entry in the store", exc_info=True)

    async def leave(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.remove_control(self.key)

    async def others(self) -> list[dict[str, Any]]:
        """The other live workers registered in this store."""
        controls = await self.store.controls(time.time())
        return [value for key, value in controls.items() if key.startswith(KEY_PREFIX) and key != self.key]


async def check_unshared_store(
    channel: Channel,
    membership: Membership,
    queues: dict[str, str],
    backend: str,
    *,
    looks: int = 5,
    pause_seconds: float = 2.0,
) -> None:
    """ConfigError when a vendor queue has consumers this (machine-local) store does not know of.

    ``queues`` maps vendor -> queue name; a passive declare reads the consumer count.
    The count can be high for a moment without any foreign store: the consumer of a
    worker SIGKILLed a moment ago lingers until the broker sees its connection close,
    and a worker that raises its prefetch consumes anew before it cancels the old
    consumer. So an excess must hold for ``looks`` looks ``pause_seconds`` apart
    before the worker refuses to start (a refused pod crash-loops).
    """
    for look in range(looks):
        excess = await _unknown_consumers(channel, membership, queues)
        if excess is None:
            return
        if look + 1 < looks:
            await asyncio.sleep(pause_seconds)
    assert excess is not None
    queue, vendor, consumers, known = excess
    raise ConfigError(
        [
            f"SWITCHBOARD_STORE_URL: {queue} already has {consumers} consumer(s) but this {backend}"
            f" store knows {known} live worker(s) for {vendor}: workers with separate stores would"
            " each keep their own idempotency records (a command could be sent twice). Share one"
            " store (postgresql:// or redis://), or set SWITCHBOARD_ALLOW_UNSHARED_STORE=true if"
            " this is intended."
        ]
    )


async def _unknown_consumers(
    channel: Channel, membership: Membership, queues: dict[str, str]
) -> tuple[str, str, int, int] | None:
    """(queue, vendor, consumers, known workers) of the first queue with more consumers than known."""
    others = await membership.others()
    for vendor, queue in sorted(queues.items()):
        frame = await channel.queue_declare(queue, passive=True)
        consumers = int(frame.method.consumer_count)
        known = sum(1 for worker in others if vendor in worker.get("vendors", ()))
        if consumers > known:
            return queue, vendor, consumers, known
    return None
