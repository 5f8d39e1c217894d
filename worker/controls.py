"""Operator controls: pause/resume by vendor, account (and type), and cancel by id.

The state lives in the shared store (``ControlStore``) so that every worker,
on every host, sees it; each worker keeps a copy refreshed twice a second, so
the hot path only reads a dict and a pause takes effect within one second.

- A paused command is not started: it goes back through a delay queue (it
  holds no worker slot and is not failed) and runs once resumed. The wait
  grows with the age of the pause, from ``DEFER_SECONDS`` up to
  ``PAUSE_MAX_DEFER_SECONDS`` (60 s): a long pause costs each command a
  trip a minute, not one every 5 s, and after a resume a command waits at
  most about as long as the pause had lasted (never more than the cap).
- Pause keys: ``pause:<account>:<type>`` holds that account of every vendor
  (the original form, kept); ``pause:<vendor>/<account>:<type>`` holds one
  vendor's account, ``<account>`` ``*`` meaning all of them.
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
ALL_ACCOUNTS = "*"
FOREVER = 10 * 365 * 86400.0


def pause_key(account: str, command_type: str | None, vendor: str | None = None) -> str:
    scope = f"{vendor}/{account}" if vendor else account
    return f"pause:{scope}:{command_type or ALL_TYPES}"


def pause_wait(age_seconds: float, floor: float, cap: float) -> float:
    """How long a paused command waits before it looks again: the pause's age, within [floor, cap]."""
    return max(floor, min(age_seconds, cap))


def cancel_key(account: str, command_id: str) -> str:
    return f"cancel:{account}:{command_id}"


class Controls:
    """This worker's view of the shared controls."""

    def __init__(self, store: ControlStore | None, *, max_wait_seconds: float = 60.0) -> None:
        self.store = store
        self.max_wait_seconds = max_wait_seconds
        self._pauses: set[tuple[str, str]] = set()
        self._since: dict[tuple[str, str], float] = {}
        """(scope, type) -> when the pause began; scope is ``account`` or ``vendor/account``."""
        self._cancels: dict[tuple[str, str], dict[str, Any]] = {}

    def paused(self, account: str, command_type: str, vendor: str | None = None) -> bool:
        return self.paused_since(account, command_type, vendor) is not None

    def paused_since(self, account: str, command_type: str, vendor: str | None = None) -> float | None:
        """When the oldest pause holding this command began; None when none does."""
        if not self._pauses:
            return None
        scopes = [account] if vendor is None else [account, f"{vendor}/{account}", f"{vendor}/{ALL_ACCOUNTS}"]
        found = [
            self._since[(scope, kind)]
            for scope in scopes
            for kind in (command_type, ALL_TYPES)
            if (scope, kind) in self._pauses
        ]
        return min(found) if found else None

    def paused_wait(self, account: str, command_type: str, vendor: str | None, floor: float) -> float | None:
        """Seconds a paused command waits before it looks again (growing); None when not paused."""
        since = self.paused_since(account, command_type, vendor)
        if since is None:
            return None
        return pause_wait(time.time() - since, floor, max(floor, self.max_wait_seconds))

    def cancellation(self, account: str, command_id: str) -> dict[str, Any] | None:
        if not self._cancels:
            return None
        return self._cancels.get((account, command_id))

    def load(self, controls: dict[str, dict[str, Any]]) -> None:
        pauses: set[tuple[str, str]] = set()
        since: dict[tuple[str, str], float] = {}
        cancels: dict[tuple[str, str], dict[str, Any]] = {}
        now = time.time()
        for key, value in controls.items():
            kind, _, rest = key.partition(":")
            account, _, target = rest.partition(":")
            if kind == "pause":
                pauses.add((account, target))
                began = value.get("since")
                since[(account, target)] = float(began) if isinstance(began, (int, float)) else now
            elif kind == "cancel":
                cancels[(account, target)] = value
        for account, command_type in pauses - self._pauses:
            PAUSED.labels(account, command_type).set(1)
        for account, command_type in self._pauses - pauses:
            PAUSED.labels(account, command_type).set(0)
        self._pauses, self._since, self._cancels = pauses, since, cancels

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
