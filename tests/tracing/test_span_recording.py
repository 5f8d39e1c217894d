"""Spans of a command, sampled up front and recorded by worker.spans, against what the SDK makes.

No broker: ``process_span``, ``client_span`` and ``publish_span`` are driven as the
dispatcher, VendorHTTP and the outbox drive them, under the provider the worker
installs (``tracing.provider()``) and under a plain SDK provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode, TraceFlags

from tests.support.otel import one_command, record_in_memory
from worker import tracing

TRACEPARENT = "00-{trace:032x}-{span:016x}-{flags}"
REMOTE_TRACE, REMOTE_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


@pytest.fixture(autouse=True)
def tracing_off_after() -> Iterator[None]:
    yield
    tracing.state.enabled = False


def parse(traceparent: str) -> tuple[int, int, str]:
    _, trace_id, span_id, flags = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16), flags


def shape(spans: tuple[ReadableSpan, ...]) -> list[tuple[Any, ...]]:
    """What a trace backend sees of a command's spans, ids replaced by their place in the tree."""
    ids = {s.context.span_id: n for n, s in enumerate(spans) if s.context is not None}
    return sorted(
        (
            s.name,
            s.kind,
            dict(s.attributes or {}),
            s.status.status_code,
            s.status.description,
            ids.get(s.parent.span_id, "remote") if s.parent is not None else None,
            [
                (e.name, {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"})
                for e in s.events
            ],
            s.instrumentation_scope.name if s.instrumentation_scope else None,
        )
        for s in spans
    )


def test_unsampled_commands_record_nothing_and_carry_their_trace_on() -> None:
    """Ratio 1/2: a command is recorded exactly when its event's traceparent says sampled, as the sampler says."""
    exporter = record_in_memory(tracing.provider(sampler=ParentBasedTraceIdRatio(0.5)))
    bound = TraceIdRatioBased.get_bound_for_rate(0.5)
    seen = {"01": 0, "00": 0}
    for _ in range(200):
        exporter.clear()
        trace_id, span_id, flags = parse(one_command()["traceparent"])
        seen[flags] += 1
        # The ratio sampler's rule, on the trace id the event carries.
        assert (flags == "01") == ((trace_id & 0xFFFFFFFFFFFFFFFF) < bound)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        if flags == "00":
            assert spans == {}
            continue
        assert set(spans) == {"process switchboard.pidj", "POST /send", "publish switchboard.events"}
        process = spans["process switchboard.pidj"]
        assert process.context is not None and process.context.trace_id == trace_id
        assert process.parent is None
        for child in ("POST /send", "publish switchboard.events"):
            assert spans[child].parent is not None
            assert spans[child].parent.span_id == process.context.span_id  # type: ignore[union-attr]
        # The event's context is the publish span's.
        assert spans["publish switchboard.events"].context.span_id == span_id  # type: ignore[union-attr]
    assert seen["00"] > 0 and seen["01"] > 0


def test_a_sampled_publisher_is_followed_whatever_the_ratio() -> None:
    exporter = record_in_memory(tracing.provider(sampler=ParentBasedTraceIdRatio(0.0)))
    headers = {
        "traceparent": TRACEPARENT.format(trace=REMOTE_TRACE, span=REMOTE_SPAN, flags="01"),
        "tracestate": "vendor=abc",
    }
    event = one_command(headers)
    trace_id, span_id, flags = parse(event["traceparent"])
    assert (trace_id, flags) == (REMOTE_TRACE, "01")
    publish = next(s for s in exporter.get_finished_spans() if s.name == "publish switchboard.events")
    assert publish.context is not None and publish.context.span_id == span_id
    assert event["tracestate"] == "vendor=abc"
    process = next(s for s in exporter.get_finished_spans() if s.name == "process switchboard.pidj")
    assert process.parent is not None and process.parent.span_id == REMOTE_SPAN
    assert process.parent.is_remote


def test_an_unsampled_publisher_is_followed_too() -> None:
    """Its trace id and state go on, under a span id of our own, not sampled; nothing recorded."""
    exporter = record_in_memory(tracing.provider(sampler=ParentBasedTraceIdRatio(1.0)))
    headers = {
        "traceparent": TRACEPARENT.format(trace=REMOTE_TRACE, span=REMOTE_SPAN, flags="00"),
        "tracestate": "vendor=abc",
    }
    event = one_command(headers)
    trace_id, span_id, flags = parse(event["traceparent"])
    assert (trace_id, flags) == (REMOTE_TRACE, "00")
    assert span_id not in (0, REMOTE_SPAN)
    assert event["tracestate"] == "vendor=abc"
    assert exporter.get_finished_spans() == ()


def test_the_unsampled_traceparent_is_the_propagators() -> None:
    """Written directly for speed, it must be what propagate.inject writes for the same span."""
    record_in_memory(tracing.provider(sampler=ParentBasedTraceIdRatio(1.0)))
    headers = {
        "traceparent": TRACEPARENT.format(trace=REMOTE_TRACE, span=REMOTE_SPAN, flags="00"),
        "tracestate": "a=1,b=2",
    }
    parent = tracing.extract(headers, None)
    with tracing.process_span("q", "send_text", None, "send_text", "pidj", parent) as span:
        ours: dict[str, Any] = {}
        tracing.inject(ours)
        theirs: dict[str, Any] = {}
        assert span is not None
        propagate.inject(theirs, context=trace.set_span_in_context(span))
    assert ours == theirs


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize(
    "sampler",
    [ALWAYS_ON, ParentBasedTraceIdRatio(1.0), TraceIdRatioBased(1.0)],
    ids=lambda s: type(s).__name__,
)
def test_recorded_spans_are_what_the_sdk_makes(sampler: Sampler, fail: bool) -> None:
    """Names, kinds, attributes, status, exception events, tree and scope: the same under both providers."""
    shapes = []
    for provider in (tracing.provider(sampler=sampler), TracerProvider(sampler=sampler)):
        exporter = record_in_memory(provider)
        try:
            one_command(fail=fail)
        except RuntimeError:
            assert fail
        spans = exporter.get_finished_spans()
        assert len(spans) == 3
        shapes.append(shape(spans))
    assert shapes[0] == shapes[1]
    if fail:
        process = next(s for s in shapes[0] if s[0] == "process switchboard.pidj")
        assert process[3] is StatusCode.ERROR and [name for name, _ in process[6]] == ["exception"]


def test_a_recorded_span_is_finished_once() -> None:
    exporter = record_in_memory(tracing.provider())
    with tracing.process_span(
        "q", "send_text", None, "send_text", "pidj", tracing.extract(None, None)
    ) as span:
        assert span is not None and span.is_recording()
    assert span is not None and not span.is_recording()
    span.end()
    span.set_attribute("late", 1)
    (recorded,) = exporter.get_finished_spans()
    assert "late" not in (recorded.attributes or {})
    assert recorded.kind is SpanKind.CONSUMER


class _ReadsAttributes(Sampler):
    """A custom sampler: only asking it tells what it decides."""

    def should_sample(self, *args: Any, **kwargs: Any) -> Any:
        return ALWAYS_ON.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "reads attributes"


class _OwnParentRule(ParentBased):
    """A parent-based sampler with a rule of its own: its root alone does not tell."""

    def should_sample(self, *args: Any, **kwargs: Any) -> Any:
        return ALWAYS_ON.should_sample(*args, **kwargs)


@pytest.mark.parametrize(
    "sampler",
    [ParentBasedTraceIdRatio(0.1), TraceIdRatioBased(0.3), ALWAYS_OFF, ParentBased(ALWAYS_OFF)],
    ids=["parentbased_traceidratio", "traceidratio", "always_off", "parentbased_always_off"],
)
def test_the_quick_root_decision_is_the_samplers(sampler: Sampler) -> None:
    """For a span without a parent, the SDK's samplers decide from the trace id alone: so does the shortcut."""
    drops = tracing._root_decision(sampler)
    assert drops is not None
    ids = RandomIdGenerator()
    attributes = {"messaging.system": "rabbitmq"}
    for _ in range(2000):
        trace_id = ids.generate_trace_id()
        result = sampler.should_sample(
            tracing._NO_PARENT, trace_id, "process q", SpanKind.CONSUMER, attributes
        )
        assert drops(trace_id) == (result.decision is Decision.DROP)
        if result.decision is not Decision.DROP:
            # What process_span then records without asking: sampled, these attributes, no trace state.
            assert result.decision is Decision.RECORD_AND_SAMPLE
            assert dict(result.attributes) == attributes and result.trace_state is None


@pytest.mark.parametrize(
    "sampler",
    [
        ParentBasedTraceIdRatio(0.1),
        ParentBased(ALWAYS_OFF),
        ParentBased(ALWAYS_ON),
        ALWAYS_ON,
        TraceIdRatioBased(0.5),
    ],
    ids=[
        "parentbased_traceidratio",
        "parentbased_always_off",
        "parentbased_always_on",
        "always_on",
        "traceidratio",
    ],
)
def test_the_quick_child_decision_is_the_samplers(sampler: Sampler) -> None:
    """Under a sampled local span, the SDK's samplers sample a child with its own attributes and the
    parent's trace state: what client and publish spans then get without asking."""
    assert tracing._child_decision(sampler)
    ids = RandomIdGenerator()
    attributes: dict[str, str | int] = {"http.request.method": "POST", "server.port": 443}
    checked = 0
    for _ in range(500):
        trace_id = ids.generate_trace_id()
        if type(sampler) is TraceIdRatioBased and sampler.should_sample(
            None, trace_id, "process q"
        ).decision is (Decision.DROP):
            continue  # its parent span would not have been sampled: no child is made
        parent = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id,
                ids.generate_span_id(),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
                trace_state=trace.TraceState([("vendor", "abc")]),
            )
        )
        result = sampler.should_sample(
            trace.set_span_in_context(parent), trace_id, "POST /send", SpanKind.CLIENT, attributes
        )
        assert result.decision is Decision.RECORD_AND_SAMPLE
        assert dict(result.attributes) == attributes
        assert result.trace_state == parent.get_span_context().trace_state
        checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    "sampler",
    [
        _ReadsAttributes(),
        _OwnParentRule(ALWAYS_ON),
        ParentBased(ALWAYS_ON, local_parent_sampled=ALWAYS_OFF),
        ParentBased(ALWAYS_ON, local_parent_sampled=TraceIdRatioBased(0.5)),
    ],
    ids=["custom", "custom_parentbased", "local_parent_sampled_off", "local_parent_sampled_ratio"],
)
def test_other_samplers_are_asked_about_children(sampler: Sampler) -> None:
    assert not tracing._child_decision(sampler)


@pytest.mark.parametrize(
    "sampler",
    [ALWAYS_ON, ParentBased(ALWAYS_ON), _ReadsAttributes(), _OwnParentRule(ALWAYS_OFF)],
    ids=["on", "parentbased_on", "custom", "custom_parentbased"],
)
def test_other_samplers_are_asked(sampler: Sampler) -> None:
    assert tracing._root_decision(sampler) is None


def test_a_dropped_root_span_is_the_one_the_sdk_path_makes() -> None:
    """The shortcut's span: valid ids, not sampled, no trace state, not recording; its traceparent the propagator's."""
    record_in_memory(tracing.provider(sampler=ParentBasedTraceIdRatio(0.0)))
    with tracing.process_span("q", "send_text", None, "send_text", "pidj", tracing._NO_PARENT) as span:
        assert span is not None and not span.is_recording()
        assert tracing.current_command_span() is span
        context = span.get_span_context()
        assert context.is_valid and not context.is_remote
        assert context.trace_flags == TraceFlags.DEFAULT and len(context.trace_state) == 0
        recorder = tracing._recorder()
        assert recorder is not None
        slow = tracing._start(
            recorder, tracing._NO_PARENT, trace.INVALID_SPAN, "process q", SpanKind.CONSUMER, {}
        )
        slow_context = slow.get_span_context()
        assert (slow_context.is_remote, slow_context.trace_flags, slow_context.trace_state) == (
            context.is_remote,
            context.trace_flags,
            context.trace_state,
        )
        assert isinstance(span, type(slow))  # a NonRecordingSpan, its context made only when asked
        assert tracing.trace_id_hex(span) == format(context.trace_id, "032x")
        ours: dict[str, Any] = {}
        tracing.inject(ours)
        theirs: dict[str, Any] = {}
        propagate.inject(theirs, context=trace.set_span_in_context(span))
        assert ours == theirs
        published: dict[str, Any] = {}
        with tracing.publish_span("switchboard.events", "send_text.succeeded", "e-1", published):
            pass
        assert published == theirs
    assert tracing.current_command_span() is not span
