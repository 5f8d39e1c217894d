"""worker.otlp against the official OTLP encoder: real SDK spans, no broker."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_message
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from tests.support.otel import one_command, record_in_memory
from worker import otlp, tracing
from worker.otlp import FastOTLPSpanExporter, encode_spans, encode_spans_official

RESOURCE = Resource.create(
    {
        "service.name": "switchboard-worker",
        "service.instance.id": "w-1",
        "host.cpu.count": 8,
        "load": 0.5,
        "canary": False,
        "regions": ("eu", "us"),
    },
    schema_url="https://opentelemetry.io/schemas/1.26.0",
)


@pytest.fixture(autouse=True)
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path must write every batch here by itself; the fallback tests undo this."""

    def refuse(spans: Sequence[ReadableSpan]) -> bytes:
        raise AssertionError("the fast encoder fell back to the official one")

    monkeypatch.setattr(otlp, "_fallback", refuse)


def provider(
    resource: Resource = RESOURCE, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    made = TracerProvider(resource=resource, span_limits=limits)
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made, exporter


def assert_compatible(spans: Sequence[ReadableSpan]) -> bytes:
    ours = encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(ours) == official_message(spans)
    assert ours == official_message(spans).SerializePartialToString()  # byte for byte, too
    return ours


def remote_parent() -> Context:
    context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1"), ("other", "x-2")]),
    )
    return trace.set_span_in_context(NonRecordingSpan(context))


def rich_spans() -> Sequence[ReadableSpan]:
    made, exporter = provider(limits=SpanLimits(max_span_attributes=12, max_events=2, max_links=1))
    first = made.get_tracer("switchboard", "1.2.3", schema_url="https://example.test/schema")
    second = made.get_tracer("vendor.http", attributes={"library.flavour": "sync", "library.rank": 2})
    every_type = {
        "string": "rabbitmq",
        "empty": "",
        "unicode": "ünïcødé ✓ 😀",
        "true": True,
        "false": False,
        "int": 443,
        "zero": 0,
        "negative": -7,
        "int64.max": 2**63 - 1,
        "int64.min": -(2**63),
        "double": 0.125,
        "double.negative": -1e300,
        "strings": ["a", "", "ü"],
        "bools": [True, False],
        "ints": [1, -1, 2**40],
    }
    with first.start_as_current_span(
        "process switchboard.pidj", context=remote_parent(), kind=SpanKind.CONSUMER
    ) as root:
        root.set_attributes(every_type)
        root.set_attribute("doubles", [0.5, -2.25])
        root.set_attribute("empty.array", [])
        root.add_event("claimed", {"attempt": 1, "store": "sqlite"}, timestamp=1_700_000_000_123_456_789)
        root.add_event("no attributes")
        root.add_event("dropped: over max_events")
        with second.start_as_current_span(
            "POST /send",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "server.port": 8443},
            links=[
                Link(root.get_span_context(), {"link.reason": "retry"}),
                Link(remote_parent_context(), {"dropped": True}),
            ],
        ) as client:
            client.set_attribute("http.response.status_code", 503)
            client.set_status(Status(StatusCode.ERROR, "vendor answered 503"))
        with first.start_as_current_span("publish switchboard.events", kind=SpanKind.PRODUCER) as publish:
            publish.set_status(Status(StatusCode.OK))
        with second.start_as_current_span("internal", kind=SpanKind.INTERNAL) as internal:
            internal.set_status(Status(StatusCode.ERROR))
        with first.start_as_current_span(
            "serve", kind=SpanKind.SERVER, links=[Link(remote_parent_context())]
        ):
            pass
    spans = exporter.get_finished_spans()
    assert {span.instrumentation_scope.name for span in spans if span.instrumentation_scope} == {
        "switchboard",
        "vendor.http",
    }
    assert spans[-1].dropped_attributes and spans[-1].dropped_events  # root: over the limits
    return spans


def remote_parent_context() -> SpanContext:
    span = trace.get_current_span(remote_parent())
    return span.get_span_context()


def test_every_field_and_value_type() -> None:
    spans = rich_spans()
    ours = assert_compatible(spans)
    request = ExportTraceServiceRequest.FromString(ours)
    (resource_spans,) = request.resource_spans
    assert [scope.scope.name for scope in resource_spans.scope_spans] == ["vendor.http", "switchboard"]
    root = next(
        span for span in resource_spans.scope_spans[1].spans if span.name == "process switchboard.pidj"
    )
    assert root.flags == 0x300  # context has is_remote, and the parent is remote
    assert root.trace_state == "vendor=v1,other=x-2"
    assert root.dropped_attributes_count == 5 and root.dropped_events_count == 1


def test_empty_batch() -> None:
    assert assert_compatible([]) == b""


def test_batch_of_one() -> None:
    made, exporter = provider()
    with made.get_tracer("switchboard").start_as_current_span("one", attributes={"k": "v"}):
        pass
    assert_compatible(exporter.get_finished_spans())


def test_spans_of_two_resources_interleaved_and_equal_resources_merged() -> None:
    one, exporter_one = provider()
    other, exporter_other = provider(Resource.create({"service.name": "other"}))
    same, exporter_same = provider(Resource.create(dict(RESOURCE.attributes), RESOURCE.schema_url))
    for name in ("a", "b"):
        for made in (one, other, same):
            with made.get_tracer("switchboard").start_as_current_span(name):
                pass
    spans = [
        span
        for pair in zip(
            exporter_one.get_finished_spans(),
            exporter_other.get_finished_spans(),
            exporter_same.get_finished_spans(),
            strict=True,
        )
        for span in pair
    ]
    request = ExportTraceServiceRequest.FromString(assert_compatible(spans))
    assert len(request.resource_spans) == 2  # RESOURCE and its equal copy share one group


def test_spans_made_without_the_sdk_pipeline() -> None:
    """No scope, no end time, no status, attribute types the SDK would have cleaned."""

    class Level(enum.IntEnum):
        HIGH = 3

    class Tone(enum.StrEnum):
        CALM = "calm"

    context = SpanContext(trace_id=1, span_id=2, is_remote=False)
    spans = [
        ReadableSpan(
            "bare",
            context=context,
            parent=SpanContext(trace_id=1, span_id=3, is_remote=False),
            attributes={
                "enum": Level.HIGH,
                "tone": Tone.CALM,
                "bytes": b"\x00\xff",
                "none": None,
                "nested": (("a", 1), [None, 2.5]),
                "mapping": {"k": "v", 3: [True]},
                "range": range(3),
            },
            start_time=5,
            status=None,  # type: ignore[arg-type]
        ),
        ReadableSpan("no times", context=context, instrumentation_scope=InstrumentationScope("s", None)),
        ReadableSpan("", context=context, end_time=7),
    ]
    assert_compatible(spans)


def test_unsupported_value_falls_back_and_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(spans: Sequence[ReadableSpan]) -> bytes:
        calls.append(len(spans))
        return encode_spans_official(spans)

    monkeypatch.setattr(otlp, "_fallback", counting)
    made, exporter = provider()
    with made.get_tracer("switchboard").start_as_current_span("ok", attributes={"k": "v"}):
        pass
    with made.get_tracer("switchboard").start_as_current_span("big", attributes={"huge": 2**64, "k": "v"}):
        pass
    spans = [
        *exporter.get_finished_spans(),
        ReadableSpan("odd", context=SpanContext(1, 2, False), attributes={"o": object()}),
    ]
    assert_compatible(spans)  # the official encoder logs and drops the attributes it cannot write
    assert calls == [3]  # the whole batch, the span the fast path could write too


def test_resource_and_scope_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    made, exporter = provider()
    with made.get_tracer("switchboard").start_as_current_span("first"):
        pass
    assert_compatible(exporter.get_finished_spans())
    monkeypatch.setattr(otlp, "_attributes", lambda *args: pytest.fail("resource encoded again"))
    assert_compatible(exporter.get_finished_spans())


class _Recorder(BaseHTTPRequestHandler):
    posts: list[tuple[str, str | None, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Recorder.posts.append((self.path, self.headers.get("Content-Type"), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def collector() -> Iterator[str]:
    _Recorder.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_exporter_posts_what_the_official_exporter_posts(collector: str) -> None:
    spans = rich_spans()
    fast = FastOTLPSpanExporter(endpoint=collector)
    assert fast._fast  # this installed version takes the fast export path
    assert fast.export(spans) is SpanExportResult.SUCCESS
    assert OTLPSpanExporter(endpoint=collector).export(spans) is SpanExportResult.SUCCESS
    (path, content_type, ours), (_, official_type, theirs) = _Recorder.posts
    assert path == "/v1/traces"
    assert content_type == official_type == "application/x-protobuf"
    assert ExportTraceServiceRequest.FromString(ours) == official_message(spans)
    assert ours == theirs
    fast.shutdown()
    assert fast.export(spans) is SpanExportResult.FAILURE
    assert len(_Recorder.posts) == 2


def test_exporter_drops_a_batch_over_max_request_size(collector: str) -> None:
    fast = FastOTLPSpanExporter(endpoint=collector, max_request_size=64)
    assert fast.export(rich_spans()) is SpanExportResult.FAILURE
    assert _Recorder.posts == []


def test_spans_recorded_by_worker_spans() -> None:
    """A command's spans as the worker records them (worker.spans), sampled and with a remote parent."""
    exporter = record_in_memory(tracing.provider(resource=RESOURCE))
    remote = {"traceparent": f"00-{0xABC:032x}-{0xDEF:016x}-01", "tracestate": "vendor=abc"}
    try:
        one_command()
        one_command(remote)
    finally:
        tracing.state.enabled = False
    spans = exporter.get_finished_spans()
    assert len(spans) == 6
    assert_compatible(spans)
