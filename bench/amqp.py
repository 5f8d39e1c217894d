"""RabbitMQ for the harness: topology, queue state, a publisher and an event collector.

The publisher and the collector each run in their own process (``spawn``), so
neither competes with the orchestrator's sampling nor with each other for the GIL.
Both use pika's BlockingConnection:

- the publisher does not use publisher confirms: pika's blocking channel waits
  for each confirm in turn, which would cap it near the rate it is meant to
  outrun; TCP flow control from the broker still paces it, and the harness
  checks delivery by the events that come back (or the queue depth for a backlog);
- the collector consumes with auto-ack from an exclusive queue bound to
  ``switchboard.events`` (``send_text.*``) and keeps only events whose
  ``command_id`` starts with this run's prefix.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import orjson
import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from worker import topology

COMMANDS_EXCHANGE = topology.COMMANDS_EXCHANGE
EVENTS_EXCHANGE = topology.EVENTS_EXCHANGE
WORKER_QUEUE = topology.vendor_queue("pidj")
COMMAND_KEY = "send_text"
EVENTS_BINDING = "send_text.*"
BASELINE_QUEUE = "bench.baseline"
BASELINE_KEY = "bench.baseline.send_text"
"""The baseline's own routing key on the same topic exchange: a copy of each
command never lands in the worker's queue, and the routing work is the same."""

BENCH_VHOST = "switchboard-bench"
DEFAULT_URL = f"amqp://guest:guest@127.0.0.1:5672/{BENCH_VHOST}"
"""A vhost of its own: a worker someone runs by hand on ``/`` never takes the bench's
commands, and the bench's purges never touch anyone else's queues."""

SENDER = "+18885552222"
"""Every command's ``from_number``: one sender, as a campaign has (its check is a cache hit)."""


@contextlib.contextmanager
def channel(url: str) -> Iterator[BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def ensure_vhost(url: str) -> str | None:
    """Create the URL's vhost with rabbitmqctl when it is missing (as the tests do); a problem, or None."""
    parsed = urllib.parse.urlparse(url)
    vhost = urllib.parse.unquote(parsed.path[1:]) or "/"
    user = urllib.parse.unquote(parsed.username or "guest")
    try:
        with channel(url):
            return None
    except pika.exceptions.AMQPConnectionError:
        pass
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        return f"cannot open vhost {vhost!r} and there is no rabbitmqctl to create it"
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, user, ".*", ".*", ".*"]):
        subprocess.run([rabbitmqctl, "-q", *args], capture_output=True, timeout=60, check=False)
    try:
        with channel(url):
            return None
    except pika.exceptions.AMQPConnectionError as exc:
        return f"cannot open vhost {vhost!r} even after rabbitmqctl add_vhost: {exc!r}"


def queue_state(url: str, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of ``queue``, or None when it does not exist."""
    with channel(url) as ch:
        try:
            ok = ch.queue_declare(queue, passive=True)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise
        return ok.method.message_count, ok.method.consumer_count


def purge(url: str, queue: str) -> None:
    with channel(url) as ch:
        ch.queue_purge(queue)


def purge_worker_queues(url: str) -> None:
    """Empty the worker's queue and every queue that feeds it later (retry delays) or holds its
    leftovers, so a command an earlier run left waiting for a retry is never counted in this one."""
    layout = topology.build({"pidj": [COMMAND_KEY]})
    with channel(url) as ch:
        for queue in layout.queues:
            try:
                ch.queue_purge(queue.name)
            except ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                ch = ch.connection.channel()


def ensure_worker_topology(url: str, cli: Path) -> str:
    """Make sure the worker's exchanges and queue exist; says how.

    Prefers the worker's own ``switchboard topology declare``; without it,
    declares the same topology from ``worker.topology`` (same arguments, so
    the worker's own declaration later does not conflict).
    """
    if queue_state(url, WORKER_QUEUE) is not None:
        return "existing"
    if cli.exists() and shutil.which(str(cli)):
        env = {**os.environ, "SWITCHBOARD_AMQP_URL": url, "SWITCHBOARD_VENDORS": "pidj"}
        done = subprocess.run(
            [str(cli), "topology", "declare"], env=env, capture_output=True, timeout=60, check=False
        )
        if done.returncode == 0 and queue_state(url, WORKER_QUEUE) is not None:
            return "cli"
    declare_topology(url, topology.build({"pidj": [COMMAND_KEY]}))
    return "declared"


def declare_topology(url: str, layout: topology.Topology) -> None:
    with channel(url) as ch:
        for exchange in layout.exchanges:
            ch.exchange_declare(
                exchange.name, exchange.kind, durable=True, arguments=exchange.arguments or None
            )
        for queue in layout.queues:
            ch.queue_declare(queue.name, durable=True, arguments=queue.arguments or None)
            for exchange_name, routing_key, arguments in queue.bindings:
                ch.queue_bind(queue.name, exchange_name, routing_key, arguments)


def ensure_baseline_queue(url: str) -> None:
    """The baseline's quorum queue, like the worker's, bound on the same exchange."""
    with channel(url) as ch:
        ch.queue_declare(BASELINE_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(BASELINE_QUEUE, COMMANDS_EXCHANGE, BASELINE_KEY)


def wait_for_depth(url: str, queue: str, depth: int, timeout: float) -> int:
    """Poll until ``queue`` holds ``depth`` ready messages (or the timeout); the last depth seen."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        state = queue_state(url, queue)
        seen = state[0] if state else -1
        if seen >= depth:
            break
        time.sleep(0.2)
    return seen


_IDS = uuid.UUID("5d1c0f3e-8a53-4c1b-9d57-2f1e6a4b7c90")


def command_id(prefix: str, index: int) -> str:
    """This run's prefix, then a UUID: random to a store as a publisher's ids are (sequential ids
    land on the same B-tree page and flatter a store), the same UUID for the same index (replays)."""
    return f"{prefix}-{uuid.uuid5(_IDS, str(index))}"


def recipient(index: int) -> str:
    """The ``index``-th command's recipient: each its own, as a campaign's are (one number for all
    would make the worker's check of it a cache hit every time: about 40 us a command spared), the
    same for the same index (replays). Valid toll-free numbers, +1 888 200-0000 onwards."""
    return f"+1888{2_000_000 + index % 8_000_000:07d}"


def command_body(command_id: str, sent_at: float, index: int = 0) -> bytes:
    # The id in the text lets the simulator spot a command sent to the vendor twice.
    payload = {"to_number": recipient(index), "from_number": SENDER, "text_body": f"bench {command_id}"}
    return orjson.dumps(
        {"id": command_id, "type": COMMAND_KEY, "payload": payload, "meta": {"sent_at": sent_at}}
    )


def event_body(command_id: str, sent_at: float) -> bytes:
    return orjson.dumps({"command_id": command_id, "status": "succeeded", "meta": {"sent_at": sent_at}})


@dataclass(frozen=True)
class PublishJob:
    url: str
    routing_key: str
    prefix: str
    count: int
    rate: float | None = None  # commands per second; None = as fast as possible
    exchange: str = COMMANDS_EXCHANGE
    events: bool = False  # publish result events instead of commands (to measure the collector alone)


def publish(job: PublishJob, progress: Synchronized[int]) -> tuple[float, float]:
    """Publish ``job.count`` persistent commands; (first, last) publish wall-clock times."""
    connection = pika.BlockingConnection(pika.URLParameters(job.url))
    ch = connection.channel()
    first = last = time.time()
    start = time.monotonic()
    try:
        for index in range(job.count):
            if job.rate:
                ahead = start + index / job.rate - time.monotonic()
                if ahead > 0.001:
                    time.sleep(ahead)
            cid = command_id(job.prefix, index)
            last = time.time()
            if index == 0:
                first = last
            properties = pika.BasicProperties(
                delivery_mode=2, content_type="application/json", message_id=cid
            )
            body = event_body(cid, last) if job.events else command_body(cid, last, index)
            ch.basic_publish(job.exchange, job.routing_key, body, properties)
            if index % 500 == 499:
                progress.value = index + 1
        # A round trip on the same channel: the broker has taken every publish before it answers.
        ch.exchange_declare(job.exchange, passive=True)
        progress.value = job.count
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return first, last


def publish_process(job: PublishJob, progress: Synchronized[int], result: Any) -> None:
    """Process entry point: sends (first, last) publish times through ``result`` (a Queue)."""
    result.put(publish(job, progress))


@dataclass
class Collected:
    """The terminal events of one run, by time of receipt."""

    receipts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds from meta.sent_at to receipt
    statuses: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    @property
    def count(self) -> int:
        return len(self.receipts)


@dataclass(frozen=True)
class CollectJob:
    url: str
    prefix: str
    expected: int
    max_seconds: float


def collect(job: CollectJob, ready: Event, stop: Event, progress: Synchronized[int]) -> Collected:
    """Count the terminal events of this run until all arrived, ``stop`` is set, or the deadline."""
    connection = pika.BlockingConnection(pika.URLParameters(job.url))
    ch = connection.channel()
    queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(queue, EVENTS_EXCHANGE, EVENTS_BINDING)
    collected = Collected()
    seen: set[str] = set()
    mark = job.prefix + "-"

    def on_event(_ch: Any, _method: Any, _properties: Any, body: bytes) -> None:
        received = time.time()
        event = orjson.loads(body)
        cid = event.get("command_id")
        if not isinstance(cid, str) or not cid.startswith(mark):
            return
        if cid in seen:
            collected.duplicates += 1
            return
        seen.add(cid)
        collected.receipts.append(received)
        collected.statuses[str(event.get("status"))] += 1
        sent_at = (event.get("meta") or {}).get("sent_at")
        collected.latencies.append(received - sent_at if isinstance(sent_at, float) else math.nan)

    ch.basic_consume(queue, on_event, auto_ack=True)
    ready.set()
    deadline = time.monotonic() + job.max_seconds
    try:
        while len(seen) < job.expected and not stop.is_set() and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
            progress.value = len(seen)
        progress.value = len(seen)
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return collected


def collect_process(
    job: CollectJob, ready: Event, stop: Event, progress: Synchronized[int], result: Any
) -> None:
    """Process entry point: sends the Collected through ``result`` (a Queue)."""
    result.put(collect(job, ready, stop, progress))
