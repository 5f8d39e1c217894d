"""The bare ceiling: the leanest consumer of these commands we can write, on the same broker and simulator.

pika's asyncio adapter + one shared aiohttp ClientSession, and nothing else:
no validation, no idempotency, no metrics, no logging; pika's transport, the
garbage collector and the form encoding as the worker has them
(``worker.amqp_tuning``, ``worker.collector``). One channel consumes,
a second one publishes (in confirm mode, like the worker's). For each message:
``orjson.loads``, POST the form to the simulator (Basic auth), publish a small
result event to ``switchboard.events`` (``send_text.succeeded``).

With ``--confirms`` (the default, and the fair comparison: the worker acks a
command only after the broker confirmed its event) a command is acked when
its event's confirm arrives, straight from pika's confirm callback: no future
or task per publish. A confirm with ``multiple`` settles every publish up to
its tag, and the acks go out as few frames as the order allows: the longest
run of settled deliveries at the front of the unacked ones in one
``basic.ack(multiple=True)``, the rest one by one. ``--no-confirms`` acks
straight after publishing (reported, not the ceiling).

The one task per message is the HTTP call: aiohttp needs a coroutine.

``--burn-us N`` spends N us of the thread's CPU on each command before its
HTTP call (a busy wait on ``time.thread_time``): ``python -m bench --calibrate``
runs such baselines next to the bare one, to show what each extra
microsecond of a consumer's CPU per command costs the ceiling.

Run alone: ``python -m bench.baseline --sim-url http://127.0.0.1:PORT/api/2020``
prints ``READY`` on stdout once consuming, and stops on SIGTERM or ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
import sys
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson
import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from bench.amqp import BASELINE_QUEUE, EVENTS_EXCHANGE
from worker import amqp_tuning, collector
from worker.keepalive import KeepAlivePool

_EVENT_PROPERTIES = pika.BasicProperties(delivery_mode=2, content_type="application/json")


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU (not wall time: a preempted wait would spend less)."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


class Acks:
    """Deliveries of the consume channel not acked yet, in delivery order; acks them in as few frames as it can."""

    def __init__(self) -> None:
        self.channel: Any = None
        # delivery tag -> settled; OrderedDict: O(1) at the front however much was removed behind it.
        self.unacked: OrderedDict[int, bool] = OrderedDict()

    def delivered(self, tag: int) -> None:
        self.unacked[tag] = False

    def settle(self, tags: list[int]) -> None:
        """These deliveries may be acked: a prefix of settled ones in one multiple ack, the others each alone."""
        unacked = self.unacked
        for tag in tags:
            unacked[tag] = True
        last = 0
        while unacked:
            tag, settled = next(iter(unacked.items()))
            if not settled:
                break
            unacked.popitem(last=False)
            last = tag
        if last:
            self.channel.basic_ack(last, multiple=True)
        for tag in tags:
            if tag > last and unacked.pop(tag, None) is not None:
                self.channel.basic_ack(tag)

    def reject(self, tags: list[int]) -> None:
        for tag in tags:
            if self.unacked.pop(tag, None) is not None:
                self.channel.basic_nack(tag, requeue=True)


class Baseline:
    """One connection, a consume channel (``prefetch`` messages in flight) and a publish channel."""

    def __init__(
        self,
        *,
        amqp_url: str,
        sim_url: str,
        authorization: str,
        confirms: bool,
        prefetch: int,
        queue: str = BASELINE_QUEUE,
        burn_seconds: float = 0.0,
        keepalive_http: bool = False,
    ) -> None:
        self.amqp_url = amqp_url
        self.send_url = sim_url.rstrip("/") + "/send"
        # --http keepalive: the vendor call on the worker's worker/keepalive.py instead of aiohttp
        # (reported beside the baseline, which the issue defines with aiohttp).
        self.pool = KeepAlivePool(sim_url, timeout=15.0, limit=prefetch) if keepalive_http else None
        self.send_path = urlsplit(self.send_url).path
        # Built once: aiohttp's auth= is deprecated and slower.
        self.headers = {"Authorization": authorization, "Content-Type": "application/x-www-form-urlencoded"}
        self.confirms = confirms
        self.prefetch = prefetch
        self.queue = queue
        self.burn_seconds = burn_seconds
        self.tasks: set[asyncio.Task[None]] = set()
        self.acks = Acks()
        # publish sequence number -> the delivery tag of the command it answers, in publish order
        self.unconfirmed: OrderedDict[int, int] = OrderedDict()
        self.published = 0
        self.closed = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.consume_channel: Any = None
        self.publish_channel: Any = None
        self.connection: AsyncioConnection | None = None

    async def start(self) -> None:
        """Connect, open both channels, and consume; returns once the broker acknowledged the consumer."""
        loop = asyncio.get_running_loop()
        # As many connections as messages in flight: the ceiling must not queue on aiohttp's default of 100.
        connector = aiohttp.TCPConnector(limit=self.prefetch)
        self.session = aiohttp.ClientSession(connector=connector)
        opened: asyncio.Future[None] = loop.create_future()

        def step(future: asyncio.Future[Any], value: Any = None) -> None:
            if not future.done():
                future.set_result(value)

        def failed(_connection: Any, error: Any) -> None:
            if not opened.done():
                opened.set_exception(ConnectionError(str(error)))
            self.closed.set()

        self.connection = AsyncioConnection(
            pika.URLParameters(self.amqp_url),
            on_open_callback=lambda _c: step(opened),
            on_open_error_callback=failed,
            on_close_callback=failed,
            custom_ioloop=loop,
        )
        await opened

        async def channel() -> Any:
            assert self.connection is not None
            channel_open: asyncio.Future[Any] = loop.create_future()
            self.connection.channel(on_open_callback=lambda ch: step(channel_open, ch))
            return await channel_open

        self.publish_channel = await channel()
        if self.confirms:
            confirm_ok: asyncio.Future[None] = loop.create_future()
            self.publish_channel.confirm_delivery(self._on_confirm, callback=lambda _f: step(confirm_ok))
            await confirm_ok
        self.consume_channel = self.acks.channel = await channel()
        qos_ok: asyncio.Future[None] = loop.create_future()
        self.consume_channel.basic_qos(prefetch_count=self.prefetch, callback=lambda _f: step(qos_ok))
        await qos_ok
        consume_ok: asyncio.Future[None] = loop.create_future()
        self.consume_channel.basic_consume(self.queue, self._on_message, callback=lambda _f: step(consume_ok))
        await consume_ok

    def _on_message(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        tag = method.delivery_tag
        self.acks.delivered(tag)
        task = asyncio.get_running_loop().create_task(self._handle(tag, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, delivery_tag: int, body: bytes) -> None:
        if self.burn_seconds:
            burn(self.burn_seconds)
        command = orjson.loads(body)
        form = urlencode(command["payload"]).encode("ascii")
        if self.pool is not None:
            answer = await self.pool.request("POST", self.send_path, self.headers, form, 15.0)
            status = "succeeded" if answer.status == 200 else "failed"
        else:
            assert self.session is not None
            async with self.session.post(
                # The form encoded here, as the worker's client does: aiohttp's FormData for a dict costs more.
                self.send_url,
                data=form,
                headers=self.headers,
            ) as response:
                await response.read()
                status = "succeeded" if response.status == 200 else "failed"
        event = orjson.dumps(
            {
                "command_id": command["id"],
                "type": command["type"],
                "status": status,
                "meta": command.get("meta", {}),
            }
        )
        self.publish_channel.basic_publish(EVENTS_EXCHANGE, f"send_text.{status}", event, _EVENT_PROPERTIES)
        if self.confirms:
            self.published += 1
            self.unconfirmed[self.published] = delivery_tag
        else:
            self.acks.settle([delivery_tag])

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        unconfirmed = self.unconfirmed
        if method.multiple:
            # Sequence numbers grow in publish order: settle from the front up to the tag.
            tags = []
            while unconfirmed:
                sequence = next(iter(unconfirmed))
                if sequence > method.delivery_tag:
                    break
                tags.append(unconfirmed.popitem(last=False)[1])
        else:
            one = unconfirmed.pop(method.delivery_tag, None)
            tags = [] if one is None else [one]
        if method.NAME == "Basic.Ack":
            self.acks.settle(tags)
        else:
            self.acks.reject(tags)

    async def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            self.connection.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout=5)
        for task in list(self.tasks):
            task.cancel()
        if self.session is not None:
            await self.session.close()
        if self.pool is not None:
            await self.pool.close()


async def _run(args: argparse.Namespace) -> int:
    baseline = Baseline(
        amqp_url=args.amqp_url,
        sim_url=args.sim_url,
        authorization="Basic " + base64.b64encode(f"{args.account_key}:{args.token}".encode()).decode(),
        confirms=args.confirms,
        prefetch=args.prefetch,
        burn_seconds=args.burn_us / 1e6,
        keepalive_http=args.http == "keepalive",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await baseline.start()
    print("READY", flush=True)
    stopped = loop.create_task(stop.wait())
    lost = loop.create_task(baseline.closed.wait())
    await asyncio.wait({stopped, lost}, timeout=args.max_seconds, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    lost.cancel()
    await baseline.close()
    return 0 if stop.is_set() or not baseline.closed.is_set() else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--sim-url", required=True, help="the simulator's base URL, ending in /api/2020")
    parser.add_argument("--account-key", default="bench-key")
    parser.add_argument("--token", default="bench-token")
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--confirms", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--burn-us",
        type=float,
        default=0.0,
        help="CPU to spend on each command, in microseconds (calibration)",
    )
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop by itself after this long")
    parser.add_argument(
        "--http", choices=["aiohttp", "keepalive"], default="aiohttp", help="the vendor call's HTTP client"
    )
    parser.add_argument(
        "--gc-young-threshold",
        type=int,
        default=collector.DEFAULT_YOUNG_THRESHOLD,
        help="the worker's collector settings by default (worker/collector.py): the ratio then compares"
        " the work done, not the collector's settings; 0 = Python's defaults",
    )
    args = parser.parse_args(argv)
    # pika's transport as the worker tunes it (frames joined into one send, larger reads).
    amqp_tuning.apply()
    collector.tune(args.gc_young_threshold)
    sys.exit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main(sys.argv[1:])
