"""OpenTelemetry traces across the bus: publisher -> process -> vendor call -> event.

Configured by the standard ``OTEL_*`` variables. With
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
set, spans are exported over OTLP/HTTP in batches; otherwise no SDK is
installed, :data:`state.enabled` stays False and the hot path skips tracing
entirely (no span objects). The publisher's ``traceparent`` is still passed
through to the command's events (:func:`passthrough`), so subscribers can
join the publisher's trace even when this worker records none.

Span names and attributes follow the messaging and HTTP semantic conventions.
No phone number, message text or credential is ever put in an attribute: only
ids, names, routing keys, methods, route templates and status codes.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACER_NAME = "switchboard"


class _State:
    enabled = False
    provider: object = None
    tracer: trace.Tracer | None = None


state = _State()


class _Resource(Resource):
    """A Resource whose hash is computed once.

    The OTLP encoder groups every exported span by its resource, and
    ``Resource.__hash__`` serialises all the attributes to JSON each time:
    about 2 % of the worker's CPU with every command sampled. A resource never
    changes after start-up, so its hash need not either.
    """

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


def setup(service_name: str = "switchboard-worker") -> bool:
    """Install the SDK with an OTLP exporter when an endpoint is configured."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from worker.otlp import FastOTLPSpanExporter

    resource = _Resource(Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(FastOTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    state.enabled = True
    return True


def enable_for_tests() -> None:
    """Tests install their own SDK provider (in-memory exporter) and call this."""
    state.enabled = True


def tracer() -> trace.Tracer:
    """The tracer of the installed provider, made once per provider.

    ``trace.get_tracer`` builds a new Tracer (and InstrumentationScope, through
    a deprecation wrapper) on every call: with one command in ten sampled, that
    was the largest cost tracing added to a command (8 % of the worker's CPU).
    """
    provider = trace.get_tracer_provider()
    if state.tracer is None or state.provider is not provider:
        state.tracer = provider.get_tracer(TRACER_NAME)
        state.provider = provider
    return state.tracer


_NO_PARENT = otel_context.Context()


def extract(headers: Mapping[str, Any] | None, meta: Mapping[str, Any] | None) -> otel_context.Context:
    """The publisher's context: AMQP headers first, then ``meta.traceparent``."""
    if not ((headers and "traceparent" in headers) or (meta and "traceparent" in meta)):
        return _NO_PARENT  # nothing to extract: skip the propagators (a root span follows)
    carrier: dict[str, str] = {}
    for source in (meta or {}, headers or {}):
        for key in ("traceparent", "tracestate"):
            value = source.get(key)
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            if isinstance(value, str):
                carrier[key] = value
    return propagate.extract(carrier)


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_TRACESTATE_MAX = 512


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if isinstance(value, str) else None


def passthrough(headers: Mapping[str, Any] | None, meta: Mapping[str, Any] | None) -> dict[str, str]:
    """With tracing off: the publisher's W3C context (AMQP headers first, then ``meta``), unchanged.

    Only a well-formed ``traceparent`` is carried (and its ``tracestate``, bounded):
    an event header must not become a channel for arbitrary publisher bytes.
    """
    if not ((headers and "traceparent" in headers) or (meta and "traceparent" in meta)):
        return {}  # the usual case: nothing to carry, nothing to parse
    for source in (headers or {}, meta or {}):
        traceparent = _text(source.get("traceparent"))
        if traceparent is not None and _TRACEPARENT.match(traceparent.strip()):
            carried = {"traceparent": traceparent.strip()}
            tracestate = _text(source.get("tracestate"))
            if tracestate and len(tracestate) <= _TRACESTATE_MAX and tracestate.isprintable():
                carried["tracestate"] = tracestate
            return carried
    return {}


def inject(headers: dict[str, Any]) -> None:
    """Carry the current context on in outgoing AMQP headers."""
    propagate.inject(headers)


@contextlib.contextmanager
def process_span(
    queue: str,
    routing_key: str,
    message_id: str | None,
    command_type: str,
    vendor: str,
    parent: otel_context.Context,
) -> Iterator[Span | None]:
    """``process switchboard.<vendor>``: one per delivery (so one per attempt)."""
    if not state.enabled:
        yield None
        return
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "switchboard.command.type": command_type,
        "switchboard.vendor": vendor,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    with tracer().start_as_current_span(
        f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def trace_id_hex(span: Span | None) -> str | None:
    if span is None:
        return None
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


@contextlib.contextmanager
def publish_span(
    exchange: str, routing_key: str, message_id: str | None, headers: dict[str, Any]
) -> Iterator[None]:
    """``publish <exchange>``; injects its context into ``headers``."""
    if not state.enabled:
        yield
        return
    if not trace.get_current_span().is_recording():
        # Not sampled: no span to make, but the context (sampled=0) still goes on.
        inject(headers)
        yield
        return
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "publish",
        "messaging.destination.name": exchange or "(default)",
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    with tracer().start_as_current_span(
        f"publish {exchange or '(default)'}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        inject(headers)
        yield


@contextlib.contextmanager
def client_span(
    vendor: str, method: str, endpoint: str, url_host: str | None, port: int | None
) -> Iterator[Span | None]:
    """A vendor HTTP call; the route template, never the concrete path (it may hold a phone number)."""
    if not state.enabled or not trace.get_current_span().is_recording():
        yield None
        return
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.template": endpoint,
        "switchboard.vendor": vendor,
    }
    if url_host:
        attributes["server.address"] = url_host
    if port:
        attributes["server.port"] = port
    with tracer().start_as_current_span(
        f"{method} {endpoint}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


def record_status(span: Span | None, status: int | None, error: BaseException | None = None) -> None:
    if span is None:
        return
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    if error is not None:
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(Status(StatusCode.ERROR))


def record_outcome(span: Span | None, status: str, code: str | None) -> None:
    if span is None:
        return
    span.set_attribute("switchboard.outcome", status)
    if code:
        span.set_attribute("error.type", code)
    if status in ("failed", "rejected", "retry"):
        span.set_status(Status(StatusCode.ERROR))
