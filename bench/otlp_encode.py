"""OTLP span encoding: the official encoder against ``worker.otlp``, on a batch shaped like the worker's.

512 spans (a BatchSpanProcessor's batch) made by the SDK, three per command as
the worker makes them: ``process switchboard.pidj`` (CONSUMER, 7 string
attributes), ``POST /send`` (CLIENT, 5 attributes incl. the int port and status
code) and ``publish switchboard.events`` (PRODUCER, 5 attributes). Both sides
produce the bytes the exporter posts. The machine is shared, so the steady
number is the instruction count::

    .venv/bin/python -m bench.otlp_encode --repeat 200
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --callgrind-out-file=/tmp/cg.out .venv/bin/python -m bench.otlp_encode --only official --repeat 5
    callgrind_annotate /tmp/cg.out | head   # instructions / (5 * 512) = per span
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from worker import tracing
from worker.otlp import encode_spans, encode_spans_official

BATCH = 512


def worker_spans(count: int = BATCH) -> Sequence[ReadableSpan]:
    exporter = InMemorySpanExporter()
    resource = tracing._Resource(
        Resource.create({"service.name": "switchboard-worker", "service.instance.id": "bench-1"})
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(tracing.TRACER_NAME)
    for n in range((count + 2) // 3):
        message_id = f"cmd-{n:08d}-5b1f0c2e"
        process = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": "switchboard.pidj",
            "messaging.rabbitmq.destination.routing_key": "pidj.send_text",
            "switchboard.command.type": "send_text",
            "switchboard.vendor": "pidj",
            "messaging.message.id": message_id,
        }
        with tracer.start_as_current_span(
            "process switchboard.pidj", kind=SpanKind.CONSUMER, attributes=process
        ):
            client: dict[str, str | int] = {
                "http.request.method": "POST",
                "url.template": "/send",
                "switchboard.vendor": "pidj",
                "server.port": 8443,
            }
            with tracer.start_as_current_span("POST /send", kind=SpanKind.CLIENT, attributes=client) as span:
                span.set_attribute("http.response.status_code", 503 if n % 50 == 0 else 200)
                if n % 50 == 0:
                    span.set_status(Status(StatusCode.ERROR))
            publish = {
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "publish",
                "messaging.destination.name": "switchboard.events",
                "messaging.rabbitmq.destination.routing_key": "event.pidj.sent",
                "messaging.message.id": message_id,
            }
            with tracer.start_as_current_span(
                "publish switchboard.events", kind=SpanKind.PRODUCER, attributes=publish
            ):
                pass
    spans = exporter.get_finished_spans()[:count]
    assert len(spans) == count
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="batches encoded per side")
    parser.add_argument("--only", choices=("official", "fast"), help="one side (for callgrind)")
    args = parser.parse_args()

    spans = worker_spans()
    assert encode_spans(spans) == encode_spans_official(spans)
    sides: dict[str, Callable[[Sequence[ReadableSpan]], bytes]] = {
        "official": encode_spans_official,
        "fast": encode_spans,
    }
    if args.only:
        # Under callgrind with --toggle-collect=functools_reduce: only the encoding is counted.
        encode = sides[args.only]
        encode(spans)  # warm: caches filled, modules imported
        functools.reduce(lambda _, __: encode(spans), range(args.repeat), None)
        return
    best: dict[str, float] = {}
    for name, encode in sides.items():
        encode(spans)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            encode(spans)
            times.append(time.perf_counter() - start)
        times.sort()
        best[name] = times[len(times) // 2]
        print(
            f"{name:>8}: median {best[name] * 1e3:.3f} ms per {BATCH}-span batch, "
            f"{best[name] / BATCH * 1e6:.2f} us per span (min {times[0] * 1e3:.3f} ms)"
        )
    print(f"   ratio: {best['official'] / best['fast']:.2f}x ({len(encode_spans(spans))} bytes per batch)")


if __name__ == "__main__":
    main()
