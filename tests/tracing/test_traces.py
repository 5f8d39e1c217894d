"""Traces with the SDK's in-memory exporter: one unbroken trace from publisher to result event."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pika
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from handlers import build_registry
from handlers.pidj.sandbox import PidjSimulator
from handlers.simulator import Fault
from tests.runtime.conftest import SEND, pidj_env
from tests.support.amqp import AMQP_URL, EventTap, command_body, publish_raw
from tests.support.otel import install
from tests.support.worker import free_port
from worker import tracing
from worker.config import load_settings
from worker.runtime import Runtime

registry = build_registry()

pytestmark = pytest.mark.integration
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True, params=["recorded", "sdk"])
def sdk(request: pytest.FixtureRequest) -> Iterator[None]:
    """Both ways spans are made: recorded by worker.spans (the worker's provider), and by the SDK (any other)."""
    provider = tracing.provider() if request.param == "recorded" else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    install(provider)
    tracing.enable_for_tests()
    yield
    tracing.state.enabled = False


@pytest.fixture
def pidj() -> Iterator[PidjSimulator]:
    simulator = PidjSimulator()
    with simulator.running_in_thread():
        yield simulator


async def run_one(
    monkeypatch: pytest.MonkeyPatch, pidj: PidjSimulator, tmp_path: Any
) -> tuple[dict[str, Any], pika.BasicProperties, int]:
    """Run a worker in this process, publish one traced send_text, return its event, headers and trace id."""
    env = {
        **pidj_env(pidj),
        "SWITCHBOARD_AMQP_URL": AMQP_URL,
        "SWITCHBOARD_METRICS_PORT": str(free_port()),
        "SWITCHBOARD_METRICS_HOST": "127.0.0.1",
        "SWITCHBOARD_STORE_URL": f"sqlite:///{tmp_path}/store.sqlite3",
        "SWITCHBOARD_RETRY_BASE_SECONDS": "0.2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime = Runtime(load_settings(), registry)
    running = asyncio.create_task(runtime.run())
    for _ in range(300):
        if runtime.ready:
            break
        await asyncio.sleep(0.05)
    tracer = trace.get_tracer("test-publisher")
    try:
        with tracer.start_as_current_span(
            "publish switchboard.commands", kind=trace.SpanKind.PRODUCER
        ) as span:
            headers: dict[str, Any] = {}
            propagate.inject(headers)
            command_id, body = command_body("send_text", SEND)
            trace_id = span.get_span_context().trace_id

        def publish_and_wait() -> tuple[dict[str, Any], pika.BasicProperties]:
            with EventTap() as tap:
                publish_raw(
                    "send_text",
                    body,
                    properties=pika.BasicProperties(
                        content_type="application/json", message_id=command_id, headers=headers
                    ),
                )
                event = tap.wait_for(command_id)
                properties = next(p for m, p, b in tap.raw if orjson.loads(b)["command_id"] == command_id)
                return event, properties

        event, properties = await asyncio.to_thread(publish_and_wait)
    finally:
        runtime.stop()
        await running
    return event, properties, trace_id


def spans_of(trace_id: int) -> list[ReadableSpan]:
    return [
        s for s in EXPORTER.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id
    ]


async def test_one_unbroken_trace(
    broker: None, pidj: PidjSimulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Publisher span -> process -> vendor call -> event publish, all in one trace, with the conventions' names."""
    EXPORTER.clear()
    event, properties, trace_id = await run_one(monkeypatch, pidj, tmp_path)
    assert event["status"] == "succeeded"
    spans = {s.name: s for s in spans_of(trace_id)}
    assert {"process switchboard.pidj", "POST /send", "publish switchboard.events"} <= set(spans)
    process = spans["process switchboard.pidj"]
    assert process.kind == trace.SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "rabbitmq"
    assert process.attributes["messaging.rabbitmq.destination.routing_key"] == "send_text"
    assert process.attributes["messaging.message.id"] == event["command_id"]
    client = spans["POST /send"]
    assert client.parent is not None and client.parent.span_id == process.context.span_id  # type: ignore[union-attr]
    assert client.attributes is not None and client.attributes["http.response.status_code"] == 200
    publish = spans["publish switchboard.events"]
    assert publish.parent is not None and publish.parent.span_id == process.context.span_id  # type: ignore[union-attr]
    # The event carries the trace on, so the subscriber's work joins it.
    assert f"{trace_id:032x}" in properties.headers["traceparent"]


async def test_retries_are_attempts_in_the_same_trace(
    broker: None, pidj: PidjSimulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A 503 then success shows two process spans (two attempts) in the publisher's trace."""
    EXPORTER.clear()
    pidj.add_fault(Fault(kind="status", status=503, count=1, path_prefix="/api/2020/send"))
    event, _, trace_id = await run_one(monkeypatch, pidj, tmp_path)
    assert event["attempts"] == 2
    names = [s.name for s in spans_of(trace_id)]
    assert names.count("process switchboard.pidj") == 2
    assert names.count("POST /send") == 2


async def test_no_phone_number_or_text_in_attributes(
    broker: None, pidj: PidjSimulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Span attributes hold ids and names, never a phone number or the message text."""
    EXPORTER.clear()
    _, _, trace_id = await run_one(monkeypatch, pidj, tmp_path)
    values = [str(v) for s in spans_of(trace_id) for v in (s.attributes or {}).values()]
    assert values
    assert not any("8885553333" in v or "8885552222" in v for v in values)
