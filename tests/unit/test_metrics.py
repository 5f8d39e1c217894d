"""worker.metrics' Counter, Gauge and Histogram: prometheus_client's exposition, with cheaper updates."""

from __future__ import annotations

import math
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from worker import metrics


def _exposition(kinds: dict[str, Any]) -> str:
    """The same updates on one set of metric classes, as Prometheus would scrape them (no _created)."""
    registry = CollectorRegistry()
    counter = kinds["counter"]("jobs_total", "Jobs.", ["type"], registry=registry)
    plain = kinds["counter"]("plain_total", "No labels.", registry=registry)
    gauge = kinds["gauge"]("in_flight", "In flight.", ["vendor"], registry=registry)
    histogram = kinds["histogram"](
        "seconds", "Durations.", ["type"], buckets=(0.005, 0.05, 0.1, 1.0, 10.0), registry=registry
    )
    for amount in (0, 1, 2.5):
        counter.labels("send_text").inc(amount)
    counter.labels("upload").inc()
    plain.inc(3)
    gauge.labels("pidj").inc()
    gauge.labels("pidj").inc(4)
    gauge.labels("pidj").dec()
    gauge.labels("peerly").dec(2)
    # Below, on and between the bounds, past the last one, +Inf, NaN (in no bucket), negative.
    for amount in (0.0, 0.005, 0.0051, 0.05, 0.07, 1.0, 9.99, 10.0, 10.01, math.inf, math.nan, -1.0):
        histogram.labels("send_text").observe(amount)
    histogram.labels("upload").observe(0.2)
    lines = prometheus_client.generate_latest(registry).decode().splitlines()
    return "\n".join(line for line in lines if "_created" not in line)


STOCK = {
    "counter": prometheus_client.Counter,
    "gauge": prometheus_client.Gauge,
    "histogram": prometheus_client.Histogram,
}
OURS = {"counter": metrics.Counter, "gauge": metrics.Gauge, "histogram": metrics.Histogram}


def test_the_same_updates_expose_the_same_series_and_values() -> None:
    ours = _exposition(OURS)
    assert ours == _exposition(STOCK)
    assert 'seconds_bucket{le="0.005",type="send_text"} 3.0' in ours  # -1, 0 and the bound itself
    assert 'seconds_count{type="send_text"} 11.0' in ours  # NaN counted in no bucket, as the loop does


@pytest.mark.parametrize(
    "update",
    [
        lambda r: metrics.Counter("a_total", "A.", ["type"], registry=r).inc(),  # a labelled parent
        lambda r: metrics.Counter("b_total", "B.", registry=r).inc(-1),
        lambda r: metrics.Gauge("c", "C.", ["vendor"], registry=r).dec(),
        lambda r: metrics.Histogram("d", "D.", ["type"], registry=r).observe(1.0),
        lambda r: metrics.Gauge("e", "E.", multiprocess_mode="mostrecent", registry=r).inc(),
    ],
)
def test_what_prometheus_client_refuses_is_still_refused(update: Any) -> None:
    with pytest.raises((ValueError, RuntimeError)):
        update(CollectorRegistry())


def test_an_exemplar_is_still_recorded() -> None:
    registry = CollectorRegistry()
    counter = metrics.Counter("f_total", "F.", registry=registry)
    histogram = metrics.Histogram("g", "G.", buckets=(1.0,), registry=registry)
    counter.inc(exemplar={"trace_id": "abc"})
    histogram.observe(0.5, exemplar={"trace_id": "def"})
    assert counter._value.get_exemplar().labels == {"trace_id": "abc"}  # type: ignore[attr-defined]
    assert histogram._buckets[0].get_exemplar().labels == {"trace_id": "def"}  # type: ignore[attr-defined]
