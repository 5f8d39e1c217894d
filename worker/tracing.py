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
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from random import getrandbits as _getrandbits
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from worker.spans import CommandSpan, Recorder

TRACER_NAME = "switchboard"


class _State:
    enabled = False
    provider: object = None
    tracer: trace.Tracer | None = None
    recorder_provider: object = None
    recorder: Recorder | None = None
    drops_root: Callable[[int], bool] | None = None
    """Whether the recorder's sampler drops a span without a parent, from its trace id alone
    (see :func:`_root_decision`); None when only asking the sampler tells."""
    random_ids = False
    """Whether the recorder's ids are the SDK's ``RandomIdGenerator``'s (``random.getrandbits``,
    never 0): a dropped command's two ids are then drawn without its two method calls."""
    samples_children = False
    """Whether the recorder's sampler samples every child of a sampled local span, as it is
    (see :func:`_child_decision`): a command's client and publish spans then skip asking it."""


state = _State()

# The current span of the command the task handles: its ``process`` span, sampled or
# not, or a client or publish span while one is open. An unsampled command's span is
# never made current in the OpenTelemetry context (attaching and detaching it cost
# more than the rest of its tracing); what needs it -- the events' traceparent, the
# client and publish spans' "is it sampled" -- reads it here.
_command_span: ContextVar[Span | None] = ContextVar("switchboard_command_span", default=None)


class _Provider(TracerProvider):
    """A provider whose commands' spans :class:`worker.spans.Recorder` records (see :func:`provider`)."""


def provider(resource: Resource | None = None, sampler: Any = None) -> TracerProvider:
    """The SDK provider the worker uses; add span processors, then ``trace.set_tracer_provider``.

    Its sampler is the one the ``OTEL_TRACES_SAMPLER`` variables choose (or
    ``sampler``). A command's spans under it are sampled up front and recorded by
    :mod:`worker.spans`, without the SDK's per-span cost; under any other provider
    the SDK makes them.
    """
    return _Provider(resource=resource, sampler=sampler)


def _recorder() -> Recorder | None:
    """The recorder of the installed provider, when it is one :func:`provider` built."""
    # The API's global, read as get_tracer_provider() reads it once one is set (a call and a
    # cast less for every command); before that, the API's own answer (its proxy).
    installed = getattr(trace, "_TRACER_PROVIDER", None) or trace.get_tracer_provider()
    if state.recorder_provider is not installed:
        state.recorder_provider = installed
        state.recorder = Recorder(installed, TRACER_NAME) if isinstance(installed, _Provider) else None
        sampler = None if state.recorder is None else state.recorder.provider.sampler
        state.drops_root = None if sampler is None else _root_decision(sampler)
        state.samples_children = sampler is not None and _child_decision(sampler)
        state.random_ids = state.recorder is not None and type(state.recorder.ids) is RandomIdGenerator
    return state.recorder


def _root_decision(sampler: Sampler | None) -> Callable[[int], bool] | None:
    """For the SDK's own samplers, their answer for a span without a parent, from its trace id.

    ``parentbased_traceidratio`` (and ``traceidratio``) drop a root span when the trace id's low
    64 bits are at or above the ratio's bound, ``always_off`` always does; that is all their
    ``should_sample`` decides then, and the span the SDK makes of a drop carries no trace
    state. Any other sampler (``always_on`` never drops; a custom one may read attributes) is
    asked as the SDK asks it.
    """
    if isinstance(sampler, ParentBased) and type(sampler).should_sample is ParentBased.should_sample:
        sampler = getattr(sampler, "_root", None)  # the SDK's attribute: without it, ask the sampler
    if sampler is ALWAYS_OFF:
        return lambda _trace_id: True
    if type(sampler) is TraceIdRatioBased:
        bound, limit = sampler.bound, TraceIdRatioBased.TRACE_ID_LIMIT
        return lambda trace_id: trace_id & limit >= bound
    return None


def _child_decision(sampler: Sampler) -> bool:
    """Whether ``sampler`` samples any child of a sampled local parent, its attributes and the
    parent's trace state unchanged: what the SDK's own samplers decide for a command's client and
    publish spans (``parentbased_*`` with the default ``local_parent_sampled``, ``always_on``, and
    ``traceidratio``, whose child shares the sampled parent's trace id). Any other is asked.
    """
    if isinstance(sampler, ParentBased):
        return (
            type(sampler).should_sample is ParentBased.should_sample
            and getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
        )
    return sampler is ALWAYS_ON or type(sampler) is TraceIdRatioBased


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
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from worker.otlp import FastOTLPSpanExporter

    resource = _Resource(Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}))
    installed = provider(resource)
    installed.add_span_processor(BatchSpanProcessor(FastOTLPSpanExporter()))
    trace.set_tracer_provider(installed)
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


_W3C_ONLY = os.environ.get("OTEL_PROPAGATORS", "tracecontext,baggage").replace(" ", "") in (
    "tracecontext,baggage",
    "tracecontext",
)


def inject(headers: dict[str, Any]) -> None:
    """Carry the current context on in outgoing AMQP headers.

    An unsampled command's span is not in the OpenTelemetry context (see
    ``_command_span``): its W3C ``traceparent`` is written here, as the
    tracecontext propagator writes it (it carries no baggage: none is extracted).
    """
    span = _command_span.get()
    if span is None:
        propagate.inject(headers)
        return
    if _W3C_ONLY:
        if type(span) is _Dropped:
            headers["traceparent"] = span.traceparent()
            return
        # A span we record is current in the OpenTelemetry context too (``_Current``); an
        # unsampled one is not, but is the command's context all the same.
        if type(span) is CommandSpan or not span.is_recording():
            span_context = span.get_span_context()
            headers["traceparent"] = _traceparent(
                span_context.trace_id, span_context.span_id, span_context.trace_flags
            )
            if span_context.trace_state:
                headers["tracestate"] = span_context.trace_state.to_header()
            return
    if span.is_recording():
        propagate.inject(headers)  # the SDK's span, current in the context
    else:
        propagate.inject(headers, context=trace.set_span_in_context(span))


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The W3C ``traceparent`` header, as the tracecontext propagator writes it."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


class _Dropped(NonRecordingSpan):
    """The span of a command the sampler dropped at once: two ids, its ``SpanContext`` made only if asked.

    Nine commands in ten, with one in ten sampled: what tracing costs them is what
    this span costs. Its trace is not sampled, has no parent and no trace state. It is
    its own ``with`` (as :class:`_CommandScope`): the command's span inside, no more.
    """

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self._token: Token[Span | None] | None = None

    def __enter__(self) -> _Dropped:
        self._token = _command_span.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        _command_span.reset(self._token)

    def get_span_context(self) -> SpanContext:
        return SpanContext(self.trace_id, self.span_id, is_remote=False)

    def traceparent(self) -> str:
        return _traceparent(self.trace_id, self.span_id, TraceFlags.DEFAULT)

    def __repr__(self) -> str:
        return f"_Dropped(trace_id={self.trace_id:032x}, span_id={self.span_id:016x})"


_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


class _CommandScope:
    """``with`` for a command span that is not recorded: it is the command's span, and no more."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.token: Token[Span | None] | None = None

    def __enter__(self) -> Span:
        self.token = _command_span.set(self.span)
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        assert self.token is not None
        _command_span.reset(self.token)


def process_span(
    queue: str,
    routing_key: str,
    message_id: str | None,
    command_type: str,
    vendor: str,
    parent: otel_context.Context,
) -> AbstractContextManager[Span | None]:
    """``process switchboard.<vendor>``: one per delivery (so one per attempt).

    A command the sampler drops at once (no publisher context, one of the SDK's samplers:
    nine in ten with one in ten sampled) costs one id pair and a context variable: no
    attributes, sampling result or generator are made for it.
    """
    if not state.enabled:
        return _NO_SPAN
    recorder = _recorder()
    drops = state.drops_root
    trace_id = None
    if recorder is not None and drops is not None and parent is _NO_PARENT:
        ids = recorder.ids
        # As RandomIdGenerator draws them (again on a 0), without its two method calls.
        trace_id = (state.random_ids and _getrandbits(128)) or ids.generate_trace_id()
        if drops(trace_id):
            span_id = (state.random_ids and _getrandbits(64)) or ids.generate_span_id()
            return _Dropped(trace_id, span_id)
    name = f"process {queue}"
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
    if recorder is None:
        return _sdk_process_span(name, parent, attributes)
    if trace_id is not None:
        # Kept by one of the SDK's samplers, which then samples with these attributes and no
        # trace state (a root has none to inherit): the span it would make, without asking.
        return _Current(
            recorder.start(
                name, SpanKind.CONSUMER, attributes, trace_id=trace_id, parent=None, trace_state=None
            ),
            parent,
        )
    span = _start(recorder, parent, trace.get_current_span(parent), name, SpanKind.CONSUMER, attributes)
    if not span.is_recording():
        # Unsampled: nothing to record, and the OpenTelemetry context is left alone
        # (attach/detach would cost more than the rest): what needs this span reads it
        # from _command_span.
        return _CommandScope(span)
    return _Current(span, parent)


@contextlib.contextmanager
def _sdk_process_span(name: str, parent: otel_context.Context, attributes: dict[str, Any]) -> Iterator[Span]:
    """Under a provider :func:`provider` did not build: the SDK makes the span."""
    with tracer().start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as sdk_span:
        token = _command_span.set(sdk_span)
        try:
            yield sdk_span
        finally:
            _command_span.reset(token)


def _start(
    recorder: Recorder,
    context: otel_context.Context,
    parent_span: Span,
    name: str,
    kind: SpanKind,
    attributes: dict[str, Any],
) -> Span:
    """A span as the SDK's ``Tracer.start_span`` would make it: the provider's sampler decides."""
    parent = parent_span.get_span_context()
    trace_id = parent.trace_id if parent.is_valid else recorder.ids.generate_trace_id()
    decision = recorder.provider.sampler.should_sample(context, trace_id, name, kind, attributes)
    sampled = decision.decision is Decision.RECORD_AND_SAMPLE
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    if not sampled and decision.decision is not Decision.RECORD_ONLY:
        return NonRecordingSpan(
            SpanContext(
                trace_id,
                recorder.ids.generate_span_id(),
                is_remote=False,
                trace_flags=flags,
                trace_state=decision.trace_state,
            )
        )
    return recorder.start(
        name,
        kind,
        dict(decision.attributes),
        trace_id=trace_id,
        parent=parent if parent.is_valid else None,
        trace_state=decision.trace_state,
        flags=flags,
    )


def _child(recorder: Recorder, command: Span, name: str, kind: SpanKind, attributes: dict[str, Any]) -> Span:
    """A span under the command's sampled span (a vendor call, a publish), as ``_start`` makes it."""
    if not state.samples_children:
        return _start(recorder, trace.set_span_in_context(command), command, name, kind, attributes)
    parent = command.get_span_context()
    return recorder.start(
        name, kind, attributes, trace_id=parent.trace_id, parent=parent, trace_state=parent.trace_state
    )


class _Current:
    """``with``: the span current (for this command and in the OpenTelemetry context) until it ends.

    Like the SDK's ``start_as_current_span``: an exception leaving it is recorded on
    the span, which then ends with an error status. A class, not a generator: a sampled
    command enters three of these.
    """

    __slots__ = ("context_token", "parent", "span", "token")

    def __init__(self, span: Span, parent: otel_context.Context | None = None) -> None:
        self.span = span
        self.parent = parent

    def __enter__(self) -> Span:
        self.context_token = otel_context.attach(trace.set_span_in_context(self.span, self.parent))
        self.token = _command_span.set(self.span)
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        span = self.span
        try:
            if exc is not None and not isinstance(exc, GeneratorExit):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            _command_span.reset(self.token)
            otel_context.detach(self.context_token)
            span.end()


def recording() -> bool:
    """Whether this task's command is sampled: its spans are recorded (False with tracing off)."""
    span = _command_span.get()
    if span is None:
        return trace.get_current_span().is_recording()
    return type(span) is not _Dropped and span.is_recording()


def current_command_span() -> Span:
    """The span of the command this task handles (invalid outside one, or with tracing off)."""
    span = _command_span.get()
    return span if span is not None else trace.get_current_span()


def trace_id_hex(span: Span | None) -> str | None:
    if span is None:
        return None
    if type(span) is _Dropped:
        return f"{span.trace_id:032x}"
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def publish_span(
    exchange: str, routing_key: str, message_id: str | None, headers: dict[str, Any]
) -> AbstractContextManager[object]:
    """``publish <exchange>``; injects its context into ``headers``."""
    if not state.enabled:
        return _NO_SPAN
    command = _command_span.get()
    if type(command) is _Dropped and _W3C_ONLY:
        headers["traceparent"] = command.traceparent()  # as inject() writes it, without asking again
        return _NO_SPAN
    if command is None:
        command = trace.get_current_span()
    if not command.is_recording():
        # Not sampled: no span to make, but the context (sampled=0) still goes on.
        inject(headers)
        return _NO_SPAN
    return _publish_span(exchange, routing_key, message_id, headers, command)


def _publish_span(
    exchange: str, routing_key: str, message_id: str | None, headers: dict[str, Any], command: Span
) -> AbstractContextManager[object]:
    name = f"publish {exchange or '(default)'}"
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "publish",
        "messaging.destination.name": exchange or "(default)",
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    recorder = _recorder()
    if recorder is None:
        return _sdk_publish_span(name, attributes, headers)
    return _Publishing(_child(recorder, command, name, SpanKind.PRODUCER, attributes), headers)


@contextlib.contextmanager
def _sdk_publish_span(name: str, attributes: dict[str, Any], headers: dict[str, Any]) -> Iterator[None]:
    with tracer().start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes):
        inject(headers)
        yield


class _Publishing(_Current):
    """A publish span, current while the message is published; its context goes in the message's headers."""

    __slots__ = ("headers",)

    def __init__(self, span: Span, headers: dict[str, Any]) -> None:
        super().__init__(span)
        self.headers = headers

    def __enter__(self) -> Span:
        span = super().__enter__()
        inject(self.headers)
        return span


def client_span(
    vendor: str, method: str, endpoint: str, url_host: str | None, port: int | None
) -> AbstractContextManager[Span | None]:
    """A vendor HTTP call; the route template, never the concrete path (it may hold a phone number)."""
    if not state.enabled:
        return _NO_SPAN
    command = current_command_span()
    if not command.is_recording():
        return _NO_SPAN
    return _client_span(vendor, method, endpoint, url_host, port, command)


def _client_span(
    vendor: str, method: str, endpoint: str, url_host: str | None, port: int | None, command: Span
) -> AbstractContextManager[Span | None]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.template": endpoint,
        "switchboard.vendor": vendor,
    }
    if url_host:
        attributes["server.address"] = url_host
    if port:
        attributes["server.port"] = port
    name = f"{method} {endpoint}"
    recorder = _recorder()
    if recorder is None:
        return tracer().start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    return _Current(_child(recorder, command, name, SpanKind.CLIENT, attributes))


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
    if span is None or not span.is_recording():
        return
    span.set_attribute("switchboard.outcome", status)
    if code:
        span.set_attribute("error.type", code)
    if status in ("failed", "rejected", "retry"):
        span.set_status(Status(StatusCode.ERROR))
