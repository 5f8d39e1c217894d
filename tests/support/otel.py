"""Installing a tracer provider in a test, more than once a process.

``trace.set_tracer_provider`` works once a process; OpenTelemetry's own tests
reset its globals between tests the same way (``opentelemetry.test``'s
``reset_trace_globals``, not installed here).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.util._once import Once


def install(provider: trace.TracerProvider) -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)
