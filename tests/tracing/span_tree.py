"""Print the span tree of one real command: ``python -m tests.tracing.span_tree``.

A publisher span, then a worker in this process against a Pidj simulator
that answers 503 once, so the tree shows both attempts. Uses the real broker
(a vhost of its own) and the SDK's in-memory exporter; the README's trace
example is its output.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from handlers.pidj.sandbox import PidjSimulator
from handlers.simulator import Fault
from tests.conftest import _declare_topology
from tests.support.amqp import delete_vhost
from tests.tracing.test_traces import run_one
from worker import tracing


def render(spans: list[ReadableSpan]) -> str:
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans if s.context is not None}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            attributes = span.attributes or {}
            shown = {
                k: attributes[k]
                for k in (
                    "messaging.rabbitmq.destination.routing_key",
                    "http.response.status_code",
                    "switchboard.outcome",
                    "error.type",
                )
                if k in attributes
            }
            extra = " ".join(f"{k}={v}" for k, v in shown.items())
            lines.append(
                f"{'  ' * depth}{span.name} [{span.kind.name.lower()}] {took:.1f} ms {extra}".rstrip()
            )
            assert span.context is not None
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracing.enable_for_tests()
    simulator = PidjSimulator()
    simulator.add_fault(Fault(kind="status", status=503, count=1, path_prefix="/api/2020/send"))
    _declare_topology()
    try:
        with simulator.running_in_thread(), tempfile.TemporaryDirectory() as tmp:
            monkeypatch = pytest.MonkeyPatch()
            try:
                _, _, trace_id = await run_one(monkeypatch, simulator, Path(tmp))
            finally:
                monkeypatch.undo()
    finally:
        delete_vhost()
    spans = [
        s for s in exporter.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id
    ]
    print(f"trace {trace_id:032x}")
    print(render(spans))


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
