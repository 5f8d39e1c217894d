"""Metrics, spans and log lines, following from decisions.

The dispatcher and its executor tell a tuple of observers what was decided;
nothing else in the dispatch path counts, traces or logs an outcome. The
tuple is chosen once at start-up, so with tracing off no span code runs at
all (:func:`observers`).

Every hook of :class:`Observer` is a no-op; an observer overrides the ones it
cares about, and only those are called (:class:`Hooks`). Hooks are called after the fact (an outcome is reported once its
command is acked) and must not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog

from worker import tracing
from worker.errors import TransientError
from worker.metrics import (
    COMMAND_ERRORS,
    COMMANDS_FINISHED,
    COMMANDS_RECEIVED,
    DEAD_LETTERS,
    DEFERRALS,
    DUPLICATES,
    HANDLER_DURATION,
    PROGRESS_EVENTS,
    RETRIES,
)

log = structlog.get_logger("switchboard.dispatcher")


class Observer:
    """Hooks for each decision; ``type`` arguments are bounded metric labels."""

    def received(self, type: str) -> None:
        """A delivery was decoded (``invalid``/``unknown`` when it is not a command)."""

    def handled(self, type: str, vendor: str, seconds: float, outcome: object) -> None:
        """The handler returned (a result, a ``Continue``) or failed (the error)."""

    def retrying(self, type: str, error: TransientError, delay_seconds: float) -> None:
        """A transient error: the command comes back after ``delay_seconds``."""

    def deferred(self, type: str, reason: str) -> None:
        """The command waits in a delay queue without counting an attempt."""

    def interim(self, type: str, status: str) -> None:
        """A ``progress`` or ``deferred`` event was published."""

    def duplicate(self, type: str, status: str) -> None:
        """An already finished command: its stored event was published again."""

    def finished(
        self, type: str, status: str, code: str | None, attempts: int, duration_ms: float, dead_lettered: bool
    ) -> None:
        """A terminal event was published and the command acked."""


class Hooks:
    """Each hook of a set of observers, held only for the observers that override it.

    The dispatch path calls ``for received in hooks.received: received(type)``: a hook an
    observer leaves as the no-op is not called at all (the spans and ramp observers
    override two hooks of seven).
    """

    received: tuple[Callable[[str], None], ...]
    handled: tuple[Callable[[str, str, float, object], None], ...]
    retrying: tuple[Callable[[str, TransientError, float], None], ...]
    deferred: tuple[Callable[[str, str], None], ...]
    interim: tuple[Callable[[str, str], None], ...]
    duplicate: tuple[Callable[[str, str], None], ...]
    finished: tuple[Callable[[str, str, str | None, int, float, bool], None], ...]

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)
        self.received = self._overriding("received")
        self.handled = self._overriding("handled")
        self.retrying = self._overriding("retrying")
        self.deferred = self._overriding("deferred")
        self.interim = self._overriding("interim")
        self.duplicate = self._overriding("duplicate")
        self.finished = self._overriding("finished")

    def _overriding(self, hook: str) -> tuple[Any, ...]:
        no_op = getattr(Observer, hook)
        return tuple(getattr(o, hook) for o in self.observers if getattr(type(o), hook) is not no_op)


class Metrics(Observer):
    """Prometheus counters and the one summary log line per command."""

    def __init__(self) -> None:
        self._line: Any = None
        """The logger of the summary line, bound at its first line (as structlog would cache it), so
        that no line a command goes through the lazy proxy's attribute lookup and ``bind`` again."""

    def received(self, type: str) -> None:
        COMMANDS_RECEIVED.labels(type).inc()

    def handled(self, type: str, vendor: str, seconds: float, outcome: object) -> None:
        HANDLER_DURATION.labels(type).observe(seconds)

    def retrying(self, type: str, error: TransientError, delay_seconds: float) -> None:
        RETRIES.labels(type, error.code).inc()
        log.info(
            "transient error; retrying later",
            code=error.code,
            error=error.message,
            delay_seconds=round(delay_seconds, 2),
        )

    def deferred(self, type: str, reason: str) -> None:
        DEFERRALS.labels(type, reason).inc()

    def interim(self, type: str, status: str) -> None:
        PROGRESS_EVENTS.labels(type, status).inc()

    def duplicate(self, type: str, status: str) -> None:
        DUPLICATES.labels(type).inc()
        log.info("already finished; publishing the stored event again", status=status)

    def finished(
        self, type: str, status: str, code: str | None, attempts: int, duration_ms: float, dead_lettered: bool
    ) -> None:
        if dead_lettered:
            DEAD_LETTERS.labels(type, status).inc()
        COMMANDS_FINISHED.labels(type, status).inc()
        if code is not None:
            COMMAND_ERRORS.labels(type, code).inc()
        line = self._line
        if line is None:
            line = self._line = log.bind()
        line.info("command finished", status=status, code=code, attempts=attempts, duration_ms=duration_ms)


class Spans(Observer):
    """The outcome on the command's ``process`` span (only installed with tracing on)."""

    def retrying(self, type: str, error: TransientError, delay_seconds: float) -> None:
        if tracing.recording():
            tracing.record_outcome(tracing.current_command_span(), "retry", error.code)

    def finished(
        self, type: str, status: str, code: str | None, attempts: int, duration_ms: float, dead_lettered: bool
    ) -> None:
        if tracing.recording():
            tracing.record_outcome(tracing.current_command_span(), status, code)


class Ramp(Observer):
    """Tells the runtime's prefetch ramp about transient vendor failures (it holds back)."""

    def __init__(self, on_transient: Callable[[str], None]) -> None:
        self.on_transient = on_transient

    def handled(self, type: str, vendor: str, seconds: float, outcome: object) -> None:
        if isinstance(outcome, TransientError):
            self.on_transient(vendor)


def observers(on_transient: Callable[[str], None] | None = None) -> tuple[Observer, ...]:
    """The observers for this process: metrics and logs always, spans when tracing is on."""
    chosen: list[Observer] = [Metrics()]
    if tracing.state.enabled:
        chosen.append(Spans())
    if on_transient is not None:
        chosen.append(Ramp(on_transient))
    return tuple(chosen)
