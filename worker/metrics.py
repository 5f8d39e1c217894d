"""Prometheus metrics: every name the worker exports is defined here.

Labels stay bounded: ``vendor``, ``type``, ``status``, ``endpoint`` (a route
template such as ``/user/{id}``), ``code`` (an error code). Never a phone
number, a command id or a host name. A ``type`` label is always a registered
command type, ``invalid`` (unreadable) or ``unknown`` (anything else): a
publisher inventing types must not be able to create series (see
:func:`type_label`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Container
from typing import TYPE_CHECKING, Any, Self

import prometheus_client
from prometheus_client import Info

from worker import __version__

if TYPE_CHECKING:
    from prometheus_client.metrics import MetricWrapperBase as _Base
else:
    _Base = object


_PLAIN_VALUES = prometheus_client.values.ValueClass is prometheus_client.values.MutexValue
"""Values kept in this process (not prometheus_client's multiprocess files): a float and its lock."""


class _CachedLabels(_Base):
    """``labels(...)`` answered from a dict once a label set has been seen; cheaper updates.

    prometheus_client checks the label count, converts every value to ``str``
    and takes a lock on each ``labels()`` call; the worker calls it several
    times per command with the same few label sets. The children are still
    prometheus_client's, so what is exported does not change.

    A command updates about ten series (received, handled, finished, in flight, the
    vendor's requests and latency, segments). prometheus_client checks on each update
    that the metric is not a labelled parent (two method calls), finds a histogram's
    bucket by walking its bounds in Python, and adds under the value's lock in a method
    of its own with a ``with``: about 6k instructions an increment, 10k an observation.
    The subclasses' overrides make the same updates under the same locks, with an
    attribute test and a bisection; anything unusual (an exemplar, a negative count,
    NaN, a labelled parent, a gauge in mostrecent mode, multiprocess values) goes to
    prometheus_client's own method, which raises or records exactly as before.
    ``tests/unit/test_metrics.py`` compares the exposition.
    """

    _children: dict[tuple[Any, ...], Any] | None = None
    _plain = False
    """Set on a metric that holds in-process values (a ``labels()`` child, a metric without
    labels); never on a labelled parent: prometheus_client only inits values where they are."""

    def _metric_init(self) -> None:
        super()._metric_init()  # type: ignore[no-untyped-call]
        self._plain = _PLAIN_VALUES

    def labels(self, *values: Any, **named: Any) -> Self:
        if named:
            return super().labels(*values, **named)
        if self._children is None:
            self._children = {}
        child: Self | None = self._children.get(values)
        if child is None:
            child = self._children[values] = super().labels(*values)
        return child

    def remove(self, *values: Any) -> None:
        self._children = None
        super().remove(*values)

    def clear(self) -> None:
        self._children = None
        super().clear()


def _add(value: Any, amount: float) -> None:
    """``MutexValue.inc``: the same lock held, without a ``with`` and its method lookups."""
    lock = value._lock
    lock.acquire()
    try:
        value._value += amount
    finally:
        lock.release()


class Counter(_CachedLabels, prometheus_client.Counter):
    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if exemplar or not amount >= 0 or not self._plain:
            return super().inc(amount, exemplar)
        _add(self._value, amount)
        return None


class Gauge(_CachedLabels, prometheus_client.Gauge):
    def inc(self, amount: float = 1) -> None:
        if self._is_most_recent or not self._plain:
            return super().inc(amount)
        _add(self._value, amount)
        return None

    def dec(self, amount: float = 1) -> None:
        if self._is_most_recent or not self._plain:
            return super().dec(amount)
        _add(self._value, -amount)
        return None


class Histogram(_CachedLabels, prometheus_client.Histogram):
    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar or amount != amount or not self._plain:  # amount != amount: NaN, in no bucket
            return super().observe(amount, exemplar)
        _add(self._sum, amount)
        # The first bound at or above the amount, as the loop it stands for finds it (the last is +Inf).
        _add(self._buckets[bisect_left(self._upper_bounds, amount)], 1)
        return None


UNKNOWN_TYPE = "unknown"
"""The one ``type`` label value for every command type no handler is registered for."""
INVALID_TYPE = "invalid"
"""The ``type`` label of a message whose type could not be read at all."""


def type_label(command_type: str, known: Container[str]) -> str:
    """``command_type`` when registered (or ``invalid``), else ``unknown``: labels from a bounded set."""
    if command_type in known or command_type == INVALID_TYPE:
        return command_type
    return UNKNOWN_TYPE


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

BUILD_INFO = Info("switchboard_build", "Version of the running worker.")
BUILD_INFO.info({"version": __version__})

COMMANDS_RECEIVED = Counter(
    "switchboard_commands_received_total",
    "Command messages taken from the broker, by command type ('invalid' when unreadable, 'unknown' when not registered).",
    ["type"],
)
COMMANDS_FINISHED = Counter(
    "switchboard_commands_finished_total",
    "Commands that reached a terminal event, by type and status (succeeded, failed, rejected).",
    ["type", "status"],
)
COMMAND_ERRORS = Counter(
    "switchboard_command_errors_total",
    "Terminal errors by command type and error code.",
    ["type", "code"],
)
HANDLER_DURATION = Histogram(
    "switchboard_handler_duration_seconds",
    "Time spent in a command's handler, per attempt.",
    ["type"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "switchboard_commands_in_flight",
    "Commands taken from the broker and not yet settled.",
    ["vendor"],
)
RETRIES = Counter(
    "switchboard_retries_total",
    "Attempts sent back to a broker delay queue after a transient error.",
    ["type", "code"],
)
DEFERRALS = Counter(
    "switchboard_deferrals_total",
    "Commands put back in a delay queue without an attempt (claimed elsewhere, paused, continuation).",
    ["type", "reason"],
)
DUPLICATES = Counter(
    "switchboard_duplicates_total",
    "Commands already finished: the stored event was published again, the vendor not called.",
    ["type"],
)
PROGRESS_EVENTS = Counter(
    "switchboard_progress_events_total",
    "Non-terminal events published (progress, deferred).",
    ["type", "status"],
)
DEAD_LETTERS = Counter(
    "switchboard_dead_letters_total",
    "Messages copied to switchboard.dead, by command type and status.",
    ["type", "status"],
)
VENDOR_REQUESTS = Counter(
    "switchboard_vendor_requests_total",
    "HTTP requests to a vendor, by endpoint template and HTTP status ('error' when no answer).",
    ["vendor", "endpoint", "status"],
)
VENDOR_LATENCY = Histogram(
    "switchboard_vendor_request_duration_seconds",
    "Latency of vendor HTTP requests.",
    ["vendor", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
BROKER_RECONNECTS = Counter(
    "switchboard_broker_reconnects_total",
    "Times the worker reconnected to RabbitMQ after losing the connection.",
)
BROKER_CONNECTED = Gauge(
    "switchboard_broker_connected",
    "1 while the worker is connected to RabbitMQ and consuming.",
)
BREAKER_STATE = Gauge(
    "switchboard_circuit_breaker_state",
    "Per-vendor circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["vendor"],
)
STORE_LATENCY = Histogram(
    "switchboard_store_operation_duration_seconds",
    "Latency of idempotency store operations.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
)
WEBHOOKS_RECEIVED = Counter(
    "switchboard_webhooks_received_total",
    "Inbound webhook requests by vendor, event name and outcome.",
    ["vendor", "event", "outcome"],
)
WEBHOOK_OPT_OUTS_WITHOUT_NUMBER = Counter(
    "switchboard_webhook_opt_outs_without_number_total",
    "Opt-out webhooks with no phone number in any recognised field: nobody was suppressed.",
    ["vendor"],
)
SUPPRESSED = Counter(
    "switchboard_suppressed_total",
    "Commands not sent because the recipient opted out.",
    ["type"],
)
PAUSED = Gauge(
    "switchboard_paused",
    "1 while an operator has paused an account's commands (type '*' = every type).",
    ["account", "type"],
)
SMS_SEGMENTS = Counter(
    "switchboard_sms_segments_total",
    "SMS segments of outgoing texts, by vendor and encoding (GSM-7, UCS-2).",
    ["vendor", "encoding"],
)
