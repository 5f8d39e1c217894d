"""The running handler's deadline, which a handler may move for work it can size.

The dispatcher runs every handler under ``handler_timeout_seconds``. Some work
has a budget of its own that only the handler can compute (an upload of
100 MiB needs longer than a JSON call), and some waits are not work at all (a
command queued for the worker's file-memory budget has not started). The
dispatcher publishes the handler's :class:`Deadline` here; handlers use
:func:`at_least` and :func:`paused` and never see the dispatcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Protocol


class Movable(Protocol):
    """What handlers may do with their deadline: read it, move it (``None``: no deadline)."""

    def when(self) -> float | None: ...

    def reschedule(self, when: float | None) -> None: ...


current: ContextVar[Movable | None] = ContextVar("switchboard_handler_deadline", default=None)
"""Set by the dispatcher around each handler call (None outside one); an
:class:`asyncio.Timeout` does as well."""


def tick_for(timeout_seconds: float) -> float:
    """How often to check deadlines of ``timeout_seconds``: a twentieth of it (60 s fires by 61 s),
    at most every second, and at least 10 ms apart (a sweep is a callback on the loop, and a
    timeout of milliseconds would have it run on nearly every turn)."""
    return min(1.0, max(0.01, timeout_seconds / 20))


class Deadlines:
    """The deadlines of the handlers running on one event loop, checked every ``tick`` seconds.

    ``asyncio.timeout`` schedules a timer per call and cancels it when the call returns:
    a timer handle pushed on the loop's heap and taken off it again (comparisons in
    Python), about 7 us a command with hundreds in flight; the handlers almost never
    time out. Here entering and leaving a deadline is adding it to a set and removing
    it, and one callback a tick, while any deadline is running, cancels the tasks
    past theirs. A deadline fires up to ``tick`` late.
    """

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.running: set[Deadline] = set()
        self._sweep: asyncio.TimerHandle | None = None

    def __call__(self, seconds: float) -> Deadline:
        """``async with deadlines(seconds):`` as ``async with asyncio.timeout(seconds):``."""
        return Deadline(self, asyncio.get_running_loop().time() + seconds)

    def _watch(self, deadline: Deadline) -> None:
        self.running.add(deadline)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.tick, self._expire)

    def _expire(self) -> None:
        self._sweep = None
        if not self.running:
            return  # nothing to watch: no callback until the next deadline starts
        now = asyncio.get_running_loop().time()
        for deadline in self.running:
            when = deadline._when
            if when is not None and when <= now and not deadline._fired:
                deadline._fired = True
                deadline._task.cancel()
        self._sweep = asyncio.get_running_loop().call_later(self.tick, self._expire)


class Deadline:
    """One handler call's deadline: :class:`asyncio.Timeout`'s behaviour, checked by :class:`Deadlines`.

    When it passes, the task is cancelled, and the ``CancelledError`` leaving the block
    becomes a ``TimeoutError``; a cancellation from anywhere else passes through as it is.
    """

    __slots__ = ("_cancelling", "_deadlines", "_fired", "_task", "_when")

    def __init__(self, deadlines: Deadlines, when: float | None) -> None:
        self._deadlines = deadlines
        self._when = when
        self._fired = False

    def when(self) -> float | None:
        return self._when

    def reschedule(self, when: float | None) -> None:
        """Move the deadline (``None``: none); once it has fired it stays fired."""
        self._when = when

    def expired(self) -> bool:
        return self._fired

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._deadlines._watch(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._deadlines.running.discard(self)
        # As asyncio.timeout: only the cancellation this deadline asked for becomes a timeout.
        if self._fired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def at_least(seconds: float) -> None:
    """Let the running handler go on for at least ``seconds`` more (never shortens it)."""
    timeout = current.get()
    if timeout is None:
        return
    when = timeout.when()
    wanted = asyncio.get_running_loop().time() + seconds
    if when is not None and when < wanted:
        timeout.reschedule(wanted)


@asynccontextmanager
async def paused() -> AsyncIterator[None]:
    """Stop the clock while waiting for something that is not the command's work.

    On exit the handler gets back the time it had left when the pause began.
    """
    timeout = current.get()
    when = timeout.when() if timeout is not None else None
    if timeout is None or when is None:
        yield
        return
    loop = asyncio.get_running_loop()
    left = when - loop.time()
    timeout.reschedule(None)
    try:
        yield
    finally:
        timeout.reschedule(loop.time() + max(left, 0.0))
