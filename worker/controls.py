"""Operator controls: pause/resume by account (and type), and cancel by id.

The state lives in the shared store (``ControlStore``) so that every worker,
on every host, sees it; each worker keeps a copy refreshed twice a second, so
the hot path only reads a dict and a pause takes effect within one second.

- A paused command is not started: it goes back through a delay queue (it
  holds no worker slot and is not failed) and runs once resumed.
- A cancelled command that has not started ends ``failed`` with code
  ``cancelled`` when its turn comes, also while it waits in a retry or
  quiet-hours delay. One already running or finished is not touched.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from worker.logging import get_logger
from worker.metrics import PAUSED
from worker.store.base import ControlStore

log = get_logger("switchboard.controls")

REFRESH_SECONDS = 0.5
ALL_TYPES = "*"
FOREVER = 10 * 365 * 86400.0


def pause_key(account: str, command_type: str | None) -> str:
    return f"pause:{account}:{command_type or ALL_TYPES}"


def cancel_key(account: str, command_id: str) -> str:
    return f"cancel:{account}:{command_id}"


class Controls:
    """This worker's view of the shared controls."""

    def __init__(self, store: ControlStore | None) -> None:
        self.store = store
        self._pauses: set[tuple[str, str]] = set()
        self._cancels: dict[tuple[str, str], dict[str, Any]] = {}

    def paused(self, account: str, command_type: str) -> bool:
        if not self._pauses:
            return False
        return (account, command_type) in self._pauses or (account, ALL_TYPES) in self._pauses

    def cancellation(self, account: str, command_id: str) -> dict[str, Any] | None:
        if not self._cancels:
            return None
        return self._cancels.get((account, command_id))

    def load(self, controls: dict[str, dict[str, Any]]) -> None:
        pauses: set[tuple[str, str]] = set()
        cancels: dict[tuple[str, str], dict[str, Any]] = {}
        for key, value in controls.items():
            kind, _, rest = key.partition(":")
            account, _, target = rest.partition(":")
            if kind == "pause":
                pauses.add((account, target))
            elif kind == "cancel":
                cancels[(account, target)] = value
        for account, command_type in pauses - self._pauses:
            PAUSED.labels(account, command_type).set(1)
        for account, command_type in self._pauses - pauses:
            PAUSED.labels(account, command_type).set(0)
        self._pauses, self._cancels = pauses, cancels

    async def refresh(self) -> None:
        if self.store is not None:
            self.load(await self.store.controls(time.time()))

    async def run(self) -> None:
        """Refresh forever; a store hiccup keeps the last known state."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log.warning("could not refresh operator controls; keeping the last state", exc_info=True)
            await asyncio.sleep(REFRESH_SECONDS)
