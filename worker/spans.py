"""Sampled spans of a command, recorded without the SDK's per-span machinery.

With every command sampled, the SDK's ``Tracer.start_span`` and ``Span`` cost more
than the rest of a command's tracing: a sampler call, a lock, ``BoundedAttributes``
validating each attribute, a ``use_span`` context manager, processor hooks. Our
spans have a handful of attributes, all strings and integers we write ourselves,
and they are handed to the span processors the SDK would hand them to, as the same
``ReadableSpan``: exporters (the OTLP one, the tests' in-memory one) see no
difference.

:class:`Recorder` is only used with the provider :func:`worker.tracing.setup`
installs (or one built by :func:`worker.tracing.provider`), whose processors are
known: they need no ``on_start``.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util import types

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


class Recorder:
    """Where a provider's spans go when they end: its resource, a scope, its processors."""

    def __init__(self, provider: TracerProvider, scope_name: str) -> None:
        self.provider = provider
        self.resource = provider.resource
        self.scope = InstrumentationScope(scope_name)
        # The SDK's own multi-processor, the one its tracers call (private in the SDK).
        self.processor: SpanProcessor = provider._active_span_processor
        self.ids = provider.id_generator

    def start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        *,
        trace_id: int,
        parent: SpanContext | None,
        trace_state: TraceState | None,
        flags: TraceFlags = _SAMPLED,
    ) -> CommandSpan:
        context = SpanContext(
            trace_id,
            self.ids.generate_span_id(),
            is_remote=False,
            trace_flags=flags,
            trace_state=trace_state,
        )
        return CommandSpan(self, name, context, parent, kind, attributes)


class CommandSpan(trace.Span):
    """A recording span: its attributes a plain dict; a ``ReadableSpan`` to the processors at ``end``."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_events",
        "_kind",
        "_links",
        "_name",
        "_parent",
        "_recorder",
        "_start",
        "_status",
    )  # fmt: skip

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
    ) -> None:
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._status = _UNSET
        self._start = time.time_ns()
        self._end: int | None = None

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    def set_attributes(self, attributes: dict[str, types.AttributeValue]) -> None:  # type: ignore[override]
        if self._end is None:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end is None:
            self._attributes[key] = value

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._end is None:
            self._events.append(Event(name, attributes, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end is None and context.is_valid:
            self._links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET changes nothing.
        if self._end is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module, qualname = type(exception).__module__, type(exception).__qualname__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time or time.time_ns()
        recorder = self._recorder
        recorder.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=recorder.resource,
                attributes=self._attributes,
                events=tuple(self._events),
                links=tuple(self._links),
                kind=self._kind,
                status=self._status,
                start_time=self._start,
                end_time=self._end,
                instrumentation_scope=recorder.scope,
            )
        )
