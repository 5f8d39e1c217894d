"""The bare ceiling: the least a consumer of these commands can do, on the same broker and simulator.

pika's asyncio adapter + one shared aiohttp ClientSession, and nothing else:
no validation, no idempotency, no metrics, no logging. For each message:
``orjson.loads``, POST the form to the simulator (Basic auth), publish a small
result event to ``switchboard.events`` (``send_text.succeeded``), then ack.

With ``--confirms`` (the default, and the fair comparison: the worker acks a
command only after the broker confirmed its event) the ack waits for the
publisher confirm of the event; ``--no-confirms`` acks straight after publishing.

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
from typing import Any

import aiohttp
import orjson
import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from bench.amqp import BASELINE_QUEUE, EVENTS_EXCHANGE

_EVENT_PROPERTIES = pika.BasicProperties(delivery_mode=2, content_type="application/json")


class Baseline:
    """One connection, one channel, ``prefetch`` messages in flight."""

    def __init__(
        self,
        *,
        amqp_url: str,
        sim_url: str,
        authorization: str,
        confirms: bool,
        prefetch: int,
        queue: str = BASELINE_QUEUE,
    ) -> None:
        self.amqp_url = amqp_url
        self.send_url = sim_url.rstrip("/") + "/send"
        self.headers = {
            "Authorization": authorization
        }  # built once: aiohttp's auth= is deprecated and slower
        self.confirms = confirms
        self.prefetch = prefetch
        self.queue = queue
        self.tasks: set[asyncio.Task[None]] = set()
        self.unconfirmed: dict[int, asyncio.Future[bool]] = {}
        self.published = 0
        self.closed = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.channel: Any = None
        self.connection: AsyncioConnection | None = None

    async def start(self) -> None:
        """Connect, open the channel, and consume; returns once the broker acknowledged the consumer."""
        loop = asyncio.get_running_loop()
        # As many connections as messages in flight: the ceiling must not queue on aiohttp's default of 100.
        connector = aiohttp.TCPConnector(limit=self.prefetch)
        self.session = aiohttp.ClientSession(connector=connector)
        opened: asyncio.Future[None] = loop.create_future()

        def step(future: asyncio.Future[None], value: Any = None) -> None:
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
        channel_open: asyncio.Future[Any] = loop.create_future()
        self.connection.channel(on_open_callback=lambda ch: step(channel_open, ch))
        self.channel = await channel_open
        if self.confirms:
            confirm_ok: asyncio.Future[None] = loop.create_future()
            self.channel.confirm_delivery(self._on_confirm, callback=lambda _f: step(confirm_ok))
            await confirm_ok
        qos_ok: asyncio.Future[None] = loop.create_future()
        self.channel.basic_qos(prefetch_count=self.prefetch, callback=lambda _f: step(qos_ok))
        await qos_ok
        consume_ok: asyncio.Future[None] = loop.create_future()
        self.channel.basic_consume(self.queue, self._on_message, callback=lambda _f: step(consume_ok))
        await consume_ok

    def _on_message(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(method.delivery_tag, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, delivery_tag: int, body: bytes) -> None:
        command = orjson.loads(body)
        assert self.session is not None
        async with self.session.post(
            self.send_url, data=command["payload"], headers=self.headers
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
        self.channel.basic_publish(EVENTS_EXCHANGE, f"send_text.{status}", event, _EVENT_PROPERTIES)
        if self.confirms:
            self.published += 1
            confirmed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self.unconfirmed[self.published] = confirmed
            if not await confirmed:
                self.channel.basic_nack(delivery_tag, requeue=True)
                return
        self.channel.basic_ack(delivery_tag)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = method.NAME == "Basic.Ack"
        tags = [method.delivery_tag]
        if method.multiple:
            # Sequence numbers grow, and the dict keeps insertion order: settle from the front.
            tags = [tag for tag in self.unconfirmed if tag <= method.delivery_tag]
        for tag in tags:
            future = self.unconfirmed.pop(tag, None)
            if future is not None and not future.done():
                future.set_result(acked)

    async def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            self.connection.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout=5)
        for task in list(self.tasks):
            task.cancel()
        if self.session is not None:
            await self.session.close()


async def _run(args: argparse.Namespace) -> int:
    baseline = Baseline(
        amqp_url=args.amqp_url,
        sim_url=args.sim_url,
        authorization="Basic " + base64.b64encode(f"{args.account_key}:{args.token}".encode()).decode(),
        confirms=args.confirms,
        prefetch=args.prefetch,
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
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop by itself after this long")
    sys.exit(asyncio.run(_run(parser.parse_args(argv))))


if __name__ == "__main__":
    main(sys.argv[1:])
