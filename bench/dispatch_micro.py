"""The dispatcher's own CPU per command, without a broker or a vendor (issue 16).

Drives :class:`~worker.dispatcher.Dispatcher` with an in-memory SQLite store, an
outbox and a channel that only count, and a handler that answers at once; logging
configured as in production (JSON at INFO) into ``/dev/null``. What it reports is
the dispatch path the worker adds to the baseline's work: decode, gates, claim,
handler call, event, store, observers, logging context. The machine is shared, so
the steady number is the instruction count::

    .venv/bin/python -m bench.dispatch_micro --commands 20000
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --callgrind-out-file=/tmp/cg.out .venv/bin/python -m bench.dispatch_micro \
        --commands 1000 --warmup 300 --repeat 1
    callgrind_annotate /tmp/cg.out | head   # instructions / 1000 = per command
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from typing import Any

import orjson
import pika

from worker import collector, otlp, tracing
from worker import logging as worker_logging
from worker.clock import SYSTEM
from worker.dispatcher import Delivery, Dispatcher, DispatchSettings
from worker.registry import CommandContext, Commands, Registry, Vendor
from worker.retry import RetryPolicy
from worker.store import Stores
from worker.store.sqlite import SQLiteDeduper, SQLiteIdempotencyStore, SQLiteSuppressionList, connect
from worker.validation import SchemaValidator


class _Channel:
    def __init__(self) -> None:
        self.acked = 0

    def ack(self, tag: int) -> bool:
        self.acked += 1
        return True

    def nack(self, tag: int, *, requeue: bool) -> bool:
        raise AssertionError("nothing here is given back")


class _Outbox:
    def __init__(self) -> None:
        self.events = 0

    async def event(self, body: bytes, *, routing_key: str, event_id: str, **kwargs: Any) -> None:
        # As worker.outbox.Outbox.event: with tracing on, a publish span carries the context on.
        headers = dict(kwargs.get("headers") or {})
        if tracing.state.enabled:
            with tracing.publish_span("switchboard.events", routing_key, event_id, headers):
                self.events += 1
        else:
            self.events += 1
        kwargs["then"]()  # the confirm: the executor's AckOnConfirm acks

    async def dead_letter(self, body: bytes, original: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing here fails")

    async def delay(self, body: bytes, original: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing here waits")


class _NoClient:
    async def close(self) -> None:
        pass


async def _answer(payload: dict[str, Any], ctx: CommandContext[Any]) -> dict[str, Any]:
    if tracing.state.enabled and tracing.recording():
        # As worker.vendor_http.VendorHTTP.request: the vendor call's client span.
        with tracing.client_span("acme", "POST", "/send", "vendor.invalid", 443) as span:
            tracing.record_status(span, 200)
    return {"id": "m-1", "segments": 1}


def _dispatcher(outbox: _Outbox) -> Dispatcher:
    from pydantic import BaseModel

    class Account(BaseModel):
        base_url: str = "http://vendor.invalid"

    commands = Commands()
    commands.command("echo", safe_to_repeat=False, schema="command")(_answer)
    registry = Registry(
        [
            Vendor(
                name="acme",
                account_model=Account,
                make_client=lambda a, h: _NoClient(),
                commands=tuple(commands),
            )
        ]
    )
    conn = connect(":memory:")
    stores = Stores(
        SQLiteIdempotencyStore(conn, 3600), SQLiteSuppressionList(conn), SQLiteDeduper(conn), "sqlite"
    )
    dispatcher = Dispatcher(
        registry,
        {("acme", "default"): _NoClient()},
        stores,
        outbox,  # type: ignore[arg-type]
        {},
        DispatchSettings(
            max_message_bytes=1 << 20,
            lease_seconds=60,
            handler_timeout_seconds=30,
            defer_seconds=3,
            poison_redeliveries=5,
            policy=RetryPolicy(),
        ),
        clock=SYSTEM,
    )
    dispatcher.validators.payloads["echo"] = SchemaValidator({"type": "object"}, prefix="/payload")
    return dispatcher


class _EncodeOnly:
    """A span processor that encodes ended spans for OTLP in batches, as the worker's exporter does.

    In this thread and without the HTTP post, so that callgrind counts the encoding too.
    """

    def __init__(self, batch: int = 512) -> None:
        self.batch = batch
        self.spans: list[Any] = []
        self.encoded = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        self.spans.append(span)
        if len(self.spans) >= self.batch:
            self.encoded += len(otlp.encode_spans(self.spans))
            self.spans = []

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _install_tracing(ratio: float) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    provider = tracing.provider(sampler=ParentBasedTraceIdRatio(ratio))
    provider.add_span_processor(_EncodeOnly())  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    tracing.enable_for_tests()


def _deliveries(channel: _Channel, start: int, count: int) -> list[Delivery]:
    out = []
    for n in range(start, start + count):
        command_id = f"cmd-{n}"
        body = orjson.dumps(
            {
                "id": command_id,
                "type": "echo",
                "payload": {"to_number": "+18885553333", "text_body": "hello"},
                "meta": {"sent_at": 1.0},
            }
        )
        properties = pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=command_id, headers={}
        )
        out.append(Delivery(channel, n, "echo", properties, body, "switchboard.acme"))  # type: ignore[arg-type]
    return out


async def _run(dispatcher: Dispatcher, deliveries: list[Delivery], batch: int) -> None:
    for i in range(0, len(deliveries), batch):
        await asyncio.gather(*(dispatcher.handle(d) for d in deliveries[i : i + batch]))


def _measure(
    loop: asyncio.AbstractEventLoop, dispatcher: Dispatcher, deliveries: list[Delivery], batch: int
) -> int:
    loop.run_until_complete(_run(dispatcher, deliveries, batch))
    return 0


def main(commands: int, warmup: int, batch: int, repeat: int = 1) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    outbox, channel = _Outbox(), _Channel()
    dispatcher = _dispatcher(outbox)
    loop.run_until_complete(_run(dispatcher, _deliveries(channel, 0, warmup), batch))
    done = warmup
    runs = []
    for _ in range(repeat):
        deliveries = _deliveries(channel, done, commands)
        cpu = time.process_time()
        # Only what runs inside functools.reduce is counted by valgrind --tool=callgrind
        # --collect-atstart=no --toggle-collect=functools_reduce (nothing on the dispatch
        # path calls it): no start-up, no warm-up, no building of the deliveries.
        functools.reduce(lambda _, __: _measure(loop, dispatcher, deliveries, batch), [0, 0])
        runs.append((time.process_time() - cpu) / commands * 1e6)
        done += commands
    loop.close()
    assert channel.acked == outbox.events == done
    # The least of the rounds: on a shared machine, others' load only ever adds.
    shown = ", ".join(f"{us:.1f}" for us in runs)
    print(f"{commands} commands x {repeat}: {min(runs):.1f} us CPU each at best ({shown})", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="commands in flight at once")
    parser.add_argument(
        "--tracing",
        type=float,
        default=None,
        metavar="RATIO",
        help="tracing on, this share of commands sampled; spans encoded for OTLP as the worker's exporter does"
        " (in this thread, a batch at a time, not sent)",
    )
    args = parser.parse_args()
    # The log lines go nowhere, rendered as in production (the report is on stderr).
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    worker_logging.configure("INFO", "json")
    # The collector as `switchboard run` sets it (worker/collector.py): with Python's default
    # young generation, collections would be counted here that the worker does not make.
    collector.tune(collector.DEFAULT_YOUNG_THRESHOLD)
    if args.tracing is not None:
        _install_tracing(args.tracing)
    main(args.commands, args.warmup, args.batch, args.repeat)
