"""A Pidj simulator that remembers which fault it injected into which command's request.

The drill needs ground truth the worker cannot fake: what the vendor was told,
which answers were ambiguous, and which side effects happened per command id.
Every command the drill publishes carries its id in a field the simulator
receives (``text_body``, ``subject``, ``external_id``), so a request and a
side effect can be traced back to the command that caused it.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from urllib.parse import unquote_plus

from aiohttp import web

from handlers.pidj.sandbox import PidjSimulator
from handlers.simulator import Fault, Handler

COMMAND_ID = re.compile(r"drill-[0-9a-f]{8}-\d{6}")

# A fault answer the worker cannot tell from "maybe done": an unsafe command must end outcome_unknown.
AMBIGUOUS = frozenset({"slow", "drop", "500", "502", "504", "500-after", "504-after"})


def fault_label(fault: Fault) -> str:
    if fault.kind == "status":
        return f"{fault.status}-after" if fault.after_processing else str(fault.status)
    return fault.kind


@dataclass(frozen=True)
class FaultMix:
    """Shares of vendor requests that meet each fault, plus periodic 429 bursts."""

    server_errors: float = 0.10
    """5xx of every kind: 500/502/504 (maybe done, some after doing it) and 503 (not done)."""
    timeouts: float = 0.05
    """Answers slower than the worker's vendor timeout (the side effect still happens)."""
    slow_delay: float = 1.5
    burst_every: float = 4.0
    """Seconds between bursts of 429 (0 = none)."""
    burst_size: int = 25
    retry_after: float = 1.0

    def faults(self) -> list[Fault]:
        """Faults whose probabilities give exactly these shares (each is drawn after the earlier ones missed)."""
        per_status = self.server_errors / 4
        shares: list[tuple[Fault, float]] = [
            (Fault(kind="slow", delay=self.slow_delay), self.timeouts),
            (Fault(status=500), per_status),
            (Fault(status=500, after_processing=True), per_status),
            (Fault(status=502), per_status / 2),
            (Fault(status=504, after_processing=True), per_status / 2),
            (Fault(status=503, retry_after=self.retry_after), per_status),
        ]
        faults, left = [], 1.0
        for fault, share in shares:
            if share <= 0:
                continue
            fault.probability = min(1.0, share / left)
            left -= share
            faults.append(fault)
        return faults

    def burst(self) -> Fault:
        return Fault(status=429, retry_after=self.retry_after, count=self.burst_size)


class DrillSimulator(PidjSimulator):
    """PidjSimulator that records (command id, fault) for each faulted request."""

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.injected: list[tuple[str, str]] = []
        self.contact_owner: dict[str, str] = {}
        """Phone number -> the command id that creates that contact (its side effect is keyed by phone)."""
        self._drill_lock = threading.Lock()

    async def _answer(
        self, request: web.Request, handler: Handler, fault: Fault | None
    ) -> web.StreamResponse:
        if fault is not None:
            match = COMMAND_ID.search(unquote_plus((await request.read()).decode("utf-8", "replace")))
            with self._drill_lock:
                self.injected.append((match.group(0) if match else "", fault_label(fault)))
        return await super()._answer(request, handler, fault)

    def faults_by_command(self) -> dict[str, Counter[str]]:
        with self._drill_lock:
            injected = list(self.injected)
        by_command: dict[str, Counter[str]] = defaultdict(Counter)
        for command_id, label in injected:
            by_command[command_id][label] += 1
        return dict(by_command)

    def effects_by_command(self) -> dict[str, int]:
        """Side effects per command id (texts, tasks, contacts created)."""
        counts: Counter[str] = Counter()
        for effect in self.effects():
            owner = self.contact_owner.get(effect.key) if effect.kind == "contact_created" else None
            if owner is None:
                match = COMMAND_ID.search(f"{effect.key} {effect.data}")
                owner = match.group(0) if match else ""
            counts[owner] += 1
        return dict(counts)
