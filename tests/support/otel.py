"""Installing a tracer provider in a test, more than once a process.

``trace.set_tracer_provider`` works once a process; OpenTelemetry's own tests
reset its globals between tests the same way (``opentelemetry.test``'s
``reset_trace_globals``, not installed here).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from worker import tracing


def install(provider: trace.TracerProvider) -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)


def record_in_memory(provider: TracerProvider) -> InMemorySpanExporter:
    """Install ``provider`` with an in-memory exporter, and turn the worker's tracing on."""
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(provider)
    tracing.enable_for_tests()
    return exporter


def one_command(headers_in: dict[str, Any] | None = None, fail: bool = False) -> dict[str, Any]:
    """One command's spans as the dispatcher, VendorHTTP and the outbox make them; the event's headers."""
    parent = tracing.extract(headers_in, None)
    event_headers: dict[str, Any] = {}
    with tracing.process_span("switchboard.pidj", "send_text", "cmd-1", "send_text", "pidj", parent):
        with tracing.client_span("pidj", "POST", "/send", "vendor.example", 443) as client:
            tracing.record_status(client, 200)
        with tracing.publish_span("switchboard.events", "send_text.succeeded", "evt-1", event_headers):
            pass
        tracing.record_outcome(tracing.current_command_span(), "succeeded", None)
        if fail:
            raise RuntimeError("handler blew up")
    return event_headers
