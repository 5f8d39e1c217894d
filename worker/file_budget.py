"""How many bytes of files the worker holds in memory at once, across all commands.

Handlers that send files reserve what they will hold (a streamed file: its
buffers; a file built in memory: its size) before they start, and release it
when the request is done. A command whose reservation does not fit waits, in
arrival order, until enough is released: it is not failed, and its handler
deadline does not run while it waits (nothing has been sent yet).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from worker import deadline

DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
"""Fits the shipped pod (512 MiB limit, about 60 MiB at rest): see README, Security."""


class ByteBudget:
    """A byte semaphore, first come first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        """Most bytes reserved at once since start (tests and the bench read it)."""
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Reserve ``size`` bytes (at most the whole budget) for the body of the block."""
        size = max(0, min(size, self.limit))
        if self._waiters or self.in_use + size > self.limit:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (size, future)
            self._waiters.append(entry)
            try:
                async with deadline.paused():
                    await future
            except BaseException:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                elif future.done() and not future.cancelled():
                    self._release(size)  # granted just as we were cancelled
                raise
        else:
            self._take(size)
        try:
            yield
        finally:
            self._release(size)

    def _take(self, size: int) -> None:
        self.in_use += size
        self.peak = max(self.peak, self.in_use)

    def _release(self, size: int) -> None:
        self.in_use -= size
        while self._waiters and self.in_use + self._waiters[0][0] <= self.limit:
            size_next, future = self._waiters.popleft()
            if not future.done():
                self._take(size_next)
                future.set_result(None)


budget = ByteBudget(DEFAULT_BUDGET_BYTES)
"""The process's budget; the runtime sets its limit from ``file_memory_budget_bytes``."""


def configure(limit: int) -> None:
    """Set the process budget's limit (at start-up, before any command runs)."""
    budget.limit = limit
