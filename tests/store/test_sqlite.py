"""SQLite shared by several worker processes on one host: claims stay exclusive."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sqlite3
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


_OLD_COMMANDS = """
CREATE TABLE commands (
    account TEXT NOT NULL, command_id TEXT NOT NULL, fingerprint TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, first_attempt_at REAL NOT NULL, attempt_started_at REAL, lease_until REAL,
    state BLOB, event BLOB, expires_at REAL NOT NULL, PRIMARY KEY (account, command_id)
) WITHOUT ROWID;
CREATE INDEX commands_expiry ON commands (expires_at);
"""


def _old_file(tmp_path: Path, *rows: str) -> Path:
    """A store file of the old layout (``commands`` WITHOUT ROWID) holding ``rows`` (SQL value lists)."""
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(_OLD_COMMANDS)
        for row in rows:
            conn.execute(f"INSERT INTO commands VALUES {row}")
        conn.commit()
    return path


def _commands_table(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        sql: str = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'commands'").fetchone()[0]
        return sql


def test_a_file_of_the_old_layout_is_rebuilt_with_its_records(tmp_path: Path) -> None:
    """``commands`` was WITHOUT ROWID: opening such a file rebuilds it as a rowid table, keeping every record."""
    path = _old_file(
        tmp_path,
        "('a', 'done-1', 'fp', 'done', 1, 1.0, 1.0, NULL, NULL, X'6576', 9e9)",
        "('a', 'waiting-1', 'fp', 'waiting', 2, 1.0, 1.0, NULL, X'7b7d', NULL, 9e9)",
    )

    async def run() -> None:
        stores = await open_stores(f"sqlite:///{path}", retention_seconds=3600)
        try:
            done = await stores.idempotency.claim("a", "done-1", "fp", 10.0, 60)
            assert (done.status, done.event) == (ClaimStatus.DONE, b"ev")
            resumed = await stores.idempotency.claim("a", "waiting-1", "fp", 10.0, 60)
            assert (resumed.status, resumed.attempts, resumed.state) == (ClaimStatus.ACQUIRED, 2, {})
            assert (await stores.idempotency.claim("a", "new", "fp", 10.0, 60)).status is ClaimStatus.ACQUIRED
            assert await stores.idempotency.prune(9e9 + 1) == 3  # the expiry index is back
        finally:
            await stores.close()

    asyncio.run(run())
    assert "WITHOUT ROWID" not in _commands_table(path).upper()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "commands_expiry" in names and "commands_rebuilt" not in names


def _open_and_claim(url: str, go: Any, results: Any) -> None:
    async def run() -> str:
        go.wait(timeout=60)
        stores = await open_stores(url, retention_seconds=3600)
        try:
            return (await stores.idempotency.claim("a", "done-1", "fp", 10.0, 60)).status.value
        finally:
            await stores.close()

    results.put(asyncio.run(run()))


def test_workers_opening_an_old_file_together_rebuild_it_once(tmp_path: Path) -> None:
    """Four processes open a file of the old layout at once: each starts, the record is there once."""
    path = _old_file(tmp_path, "('a', 'done-1', 'fp', 'done', 1, 1.0, 1.0, NULL, NULL, X'6576', 9e9)")
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    processes = [
        context.Process(target=_open_and_claim, args=(f"sqlite:///{path}", go, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        go.set()
        statuses = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert statuses == [ClaimStatus.DONE.value] * PROCESSES
    assert "WITHOUT ROWID" not in _commands_table(path).upper()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM commands").fetchone() == (1,)


def test_a_new_file_has_commands_as_a_rowid_table(tmp_path: Path) -> None:
    async def run() -> None:
        stores = await open_stores(f"sqlite:///{tmp_path}/new.sqlite3", retention_seconds=3600)
        await stores.close()

    asyncio.run(run())
    assert "WITHOUT ROWID" not in _commands_table(tmp_path / "new.sqlite3").upper()
