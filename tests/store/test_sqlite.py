"""SQLite shared by several worker processes on one host: claims stay exclusive."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

from worker.store import ClaimStatus, open_stores

KEYS = 300
PROCESSES = 4


def claim_all(url: str, ready: Any, go: Any, results: Any) -> None:
    """In a separate process: claim every key (all processes in the same order, so they collide)."""

    async def run() -> list[str]:
        stores = await open_stores(url, retention_seconds=3600)
        try:
            ready.put(True)
            go.wait(timeout=60)  # all start together, so their claims collide
            return [
                (await stores.idempotency.claim("acct", f"cmd-{n}", "fp", 1000.0, 60)).status.value
                for n in range(KEYS)
            ]
        finally:
            await stores.close()

    results.put(asyncio.run(run()))


def test_claims_are_exclusive_across_processes(tmp_path: Path) -> None:
    """Four processes with their own connections claim the same keys: each key is acquired exactly once."""
    url = f"sqlite:///{tmp_path}/shared.sqlite3"
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    processes = [context.Process(target=claim_all, args=(url, ready, go, results)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            ready.get(timeout=60)
        go.set()
        claimed = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    for n in range(KEYS):
        statuses = [result[n] for result in claimed]
        assert statuses.count(ClaimStatus.ACQUIRED.value) == 1, (n, statuses)
        assert statuses.count(ClaimStatus.BUSY.value) == PROCESSES - 1


def test_two_connections_see_each_others_outcomes(tmp_path: Path) -> None:
    """What one connection stores, another connection on the same file sees at once."""

    async def run() -> None:
        url = f"sqlite:///{tmp_path}/shared.sqlite3"
        first = await open_stores(url, retention_seconds=3600)
        second = await open_stores(url, retention_seconds=3600)
        try:
            assert (await first.idempotency.claim("a", "x", "fp", 1.0, 60)).status is ClaimStatus.ACQUIRED
            assert (await second.idempotency.claim("a", "x", "fp", 2.0, 60)).status is ClaimStatus.BUSY
            await first.idempotency.complete("a", "x", "fp", b"ev", 3.0)
            done = await second.idempotency.claim("a", "x", "fp", 4.0, 60)
            assert (done.status, done.event) == (ClaimStatus.DONE, b"ev")
            await second.suppressions.add("a", "+18885551234", reason="STOP", source="test", now=5.0)
            assert await first.suppressions.contains("a", "+18885551234")
        finally:
            await first.close()
            await second.close()

    asyncio.run(run())
