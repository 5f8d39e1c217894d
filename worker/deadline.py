"""The running handler's deadline, which a handler may move for work it can size.

The dispatcher runs every handler under ``handler_timeout_seconds``. Some work
has a budget of its own that only the handler can compute (an upload of
100 MiB needs longer than a JSON call), and some waits are not work at all (a
command queued for the worker's file-memory budget has not started). The
dispatcher publishes its :class:`asyncio.Timeout` here; handlers use
:func:`at_least` and :func:`paused` and never see the dispatcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

current: ContextVar[asyncio.Timeout | None] = ContextVar("switchboard_handler_deadline", default=None)
"""Set by the dispatcher around each handler call (None outside one)."""


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
