"""SQLite backend: the embedded default for workers on one host.

WAL mode lets several worker processes share the file; every decision is one
``BEGIN IMMEDIATE`` transaction, so two processes never both acquire a claim.
With ``synchronous=NORMAL`` a killed process loses nothing (the WAL is in the
OS cache); only a power cut could lose the last transactions.

Calls run on the event loop: each is tens of microseconds, cheaper than a hop
to a thread; writes made in one loop turn share one transaction (see
:class:`Connection`), so the write lock is held briefly and commits are few.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from worker.logging import get_logger
from worker.store.base import BreakerRecord, Claim, ClaimStatus, Lease

T = TypeVar("T")

log = get_logger("switchboard.store.sqlite")

BUSY_TIMEOUT_MS = 10_000
REBUILD_WAIT_MS = 600_000
"""How long a worker starting on a file being rebuilt (see ``_rebuild_commands``) waits for it."""

# A rowid table, not WITHOUT ROWID as the small tables are: a row carries its stored event
# (hundreds of bytes), and keyed by its random command id, a WITHOUT ROWID B-tree of such rows
# splits pages at every other insert. Measured (60,000 commands, UUID ids, 700-byte events):
# 85 -> 45 us of CPU and 116 -> 55 us of wall time a command.
COMMANDS = """
CREATE TABLE IF NOT EXISTS {name} (
    account TEXT NOT NULL,
    command_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,            -- running | pending | waiting | done
    attempts INTEGER NOT NULL,
    first_attempt_at REAL NOT NULL,
    attempt_started_at REAL,
    lease_until REAL,
    state BLOB,
    event BLOB,
    expires_at REAL NOT NULL,
    PRIMARY KEY (account, command_id)
);
"""
_COLUMNS = (
    "account, command_id, fingerprint, status, attempts, first_attempt_at, attempt_started_at,"
    " lease_until, state, event, expires_at"
)

SCHEMA = (
    COMMANDS.format(name="commands")
    + """CREATE INDEX IF NOT EXISTS commands_expiry ON commands (expires_at);
CREATE TABLE IF NOT EXISTS suppressions (
    account TEXT NOT NULL,
    number TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (account, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS controls (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS breakers (
    key TEXT PRIMARY KEY,            -- the vendor
    open_until REAL NOT NULL,
    probe_until REAL NOT NULL
) WITHOUT ROWID;
"""
)


def connect(path: str) -> Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=10.0, factory=Connection
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.executescript(SCHEMA)
    _rebuild_commands(conn)
    return conn


def _rebuild_commands(conn: sqlite3.Connection) -> None:
    """A file made before ``commands`` was a rowid table gets the new layout, rows and all.

    In one ``BEGIN IMMEDIATE`` transaction, checked again inside it: workers starting
    together on one file rebuild it once, and one still running the old code reads
    the same columns afterwards (its statements are prepared again).
    """

    def without_rowid() -> bool:
        row = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'commands'"
        ).fetchone()
        return "WITHOUT ROWID" in row[0].upper()

    if not without_rowid():
        return
    log.warning("rebuilding the SQLite commands table as a rowid table (once, after an upgrade)")
    # Copying takes about 15 s a million records; workers starting meanwhile wait for it,
    # rather than give up after the usual busy timeout and exit.
    conn.execute(f"PRAGMA busy_timeout={REBUILD_WAIT_MS}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if without_rowid():
            conn.execute("DROP TABLE IF EXISTS commands_rebuilt")
            conn.execute(COMMANDS.format(name="commands_rebuilt"))
            conn.execute(f"INSERT INTO commands_rebuilt ({_COLUMNS}) SELECT {_COLUMNS} FROM commands")
            conn.execute("DROP TABLE commands")  # and its index
            conn.execute("ALTER TABLE commands_rebuilt RENAME TO commands")
            conn.execute("CREATE INDEX commands_expiry ON commands (expires_at)")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


class Connection(sqlite3.Connection):
    """A connection whose writes group-commit.

    Every write submitted during one turn of the event loop runs, in order,
    in one ``BEGIN IMMEDIATE`` transaction, committed once: under load a
    commit covers dozens of claims and outcomes instead of one. Each write
    still sees the ones before it, and its future resolves only after COMMIT.
    If the batch fails, each write is retried alone so one bad write cannot
    fail the others.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[tuple[Callable[[sqlite3.Cursor], Any], asyncio.Future[Any]]] = []
        # Statements run on these two cursors rather than on a new one each (``Connection.execute``
        # makes one): a third of the cost of a small statement. Each statement is read to its end
        # at once (a lookup by key is done at its first row), so no cursor holds a read open.
        self._writer = self.cursor()
        self.reader = self.cursor()
        """For lookups on the event loop, between batches (the hot ones: ``contains``)."""

    def write(self, op: Callable[[sqlite3.Cursor], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((op, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        cursor = self._writer
        try:
            cursor.execute("BEGIN IMMEDIATE")
            results = [op(cursor) for op, _ in batch]
            cursor.execute("COMMIT")
        except Exception:
            if self.in_transaction:
                self.execute("ROLLBACK")
            if len(batch) > 1:
                for op, future in batch:
                    self._run_alone(op, future)
            else:
                self._run_alone(*batch[0])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _run_alone(self, op: Callable[[sqlite3.Cursor], Any], future: asyncio.Future[Any]) -> None:
        cursor = self._writer
        try:
            cursor.execute("BEGIN IMMEDIATE")
            result = op(cursor)
            cursor.execute("COMMIT")
        except Exception as exc:
            if self.in_transaction:
                self.execute("ROLLBACK")
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)


def _state(blob: bytes | None) -> dict[str, Any] | None:
    return None if blob is None else orjson.loads(blob)


class SQLiteIdempotencyStore:
    def __init__(self, conn: Connection, retention_seconds: float) -> None:
        self.conn = conn
        self.retention = retention_seconds

    async def claim(
        self, account: str, command_id: str, fingerprint: str, now: float, lease_seconds: float
    ) -> Claim:
        # No read before the batch: a new command (the usual case) is one statement in the
        # loop turn's transaction, and a replay, a duplicate or a conflict is read back there.
        def op(conn: sqlite3.Cursor) -> Claim:
            # A new command (the usual case) in one statement: inserted, or written over an
            # expired record; any other record is left as it is and read back below.
            cursor = conn.execute(
                "INSERT INTO commands (account, command_id, fingerprint, status, attempts, first_attempt_at,"
                " attempt_started_at, lease_until, expires_at) VALUES (?, ?, ?, 'running', 1, ?, ?, ?, ?)"
                " ON CONFLICT (account, command_id) DO UPDATE SET fingerprint = excluded.fingerprint,"
                " status = 'running', attempts = 1, first_attempt_at = excluded.first_attempt_at,"
                " attempt_started_at = excluded.attempt_started_at, lease_until = excluded.lease_until,"
                " state = NULL, event = NULL, expires_at = excluded.expires_at"
                " WHERE commands.expires_at < excluded.first_attempt_at",
                (account, command_id, fingerprint, now, now, now + lease_seconds, now + self.retention),
            )
            if cursor.rowcount == 1:
                return Claim(ClaimStatus.ACQUIRED, 1, now, now, now + lease_seconds)
            stored_fp, status, attempts, first, started, lease_until, state, event = conn.execute(
                "SELECT fingerprint, status, attempts, first_attempt_at, attempt_started_at, lease_until, state, event"
                " FROM commands WHERE account = ? AND command_id = ?",
                (account, command_id),
            ).fetchone()
            if stored_fp != fingerprint:
                return Claim(ClaimStatus.CONFLICT, attempts, first, started, lease_until)
            if status == "done":
                return Claim(ClaimStatus.DONE, attempts, first, started, lease_until, event=event)
            if status in ("pending", "waiting"):
                attempts = attempts + 1 if status == "pending" else attempts
                conn.execute(
                    "UPDATE commands SET status = 'running', attempts = ?, attempt_started_at = ?, lease_until = ?"
                    " WHERE account = ? AND command_id = ?",
                    (attempts, now, now + lease_seconds, account, command_id),
                )
                return Claim(ClaimStatus.ACQUIRED, attempts, first, now, now + lease_seconds, _state(state))
            if lease_until > now:
                return Claim(ClaimStatus.BUSY, attempts, first, started, lease_until, _state(state))
            return Claim(ClaimStatus.EXPIRED, attempts, first, started, lease_until, _state(state))

        return await self.conn.write(op)

    async def take_over(
        self, account: str, command_id: str, expected_lease_until: float, now: float, lease_seconds: float
    ) -> Claim:
        def op(conn: sqlite3.Cursor) -> Claim:
            cursor = conn.execute(
                "UPDATE commands SET attempts = attempts + 1, attempt_started_at = ?, lease_until = ?"
                " WHERE account = ? AND command_id = ? AND status = 'running' AND lease_until = ?",
                (now, now + lease_seconds, account, command_id, expected_lease_until),
            )
            if cursor.rowcount != 1:
                return Claim(ClaimStatus.BUSY)
            attempts, first, state = conn.execute(
                "SELECT attempts, first_attempt_at, state FROM commands WHERE account = ? AND command_id = ?",
                (account, command_id),
            ).fetchone()
            return Claim(ClaimStatus.ACQUIRED, attempts, first, now, now + lease_seconds, _state(state))

        return await self.conn.write(op)

    async def release(
        self,
        account: str,
        command_id: str,
        state: dict[str, Any] | None = None,
        *,
        waiting: bool = False,
        started: float | None = None,
    ) -> None:
        def op(conn: sqlite3.Cursor) -> None:
            conn.execute(
                "UPDATE commands SET status = ?, lease_until = NULL, state = ?"
                " WHERE account = ? AND command_id = ? AND status = 'running'"
                " AND (? IS NULL OR attempt_started_at = ?)",
                (
                    "waiting" if waiting else "pending",
                    None if state is None else orjson.dumps(state),
                    account,
                    command_id,
                    started,
                    started,
                ),
            )

        return await self.conn.write(op)

    async def complete(
        self, account: str, command_id: str, fingerprint: str, event: bytes, now: float
    ) -> bytes:
        def op(conn: sqlite3.Cursor) -> bytes:
            # One statement in the usual case, the outcome of a command claimed here: a plain
            # UPDATE, cheaper than the upsert below (no row to build for an insert first).
            if (
                conn.execute(
                    "UPDATE commands SET status = 'done', event = ?, lease_until = NULL, expires_at = ?"
                    " WHERE account = ? AND command_id = ? AND status != 'done'",
                    (event, now + self.retention, account, command_id),
                ).rowcount
                == 1
            ):
                return event
            # No record, or an outcome already stored: the upsert changes nothing when there is
            # one (the first one wins), and only then is that one read back.
            cursor = conn.execute(
                "INSERT INTO commands (account, command_id, fingerprint, status, attempts, first_attempt_at, event,"
                " expires_at) VALUES (?, ?, ?, 'done', 0, ?, ?, ?)"
                " ON CONFLICT (account, command_id) DO UPDATE SET status = 'done', event = excluded.event,"
                " lease_until = NULL, expires_at = excluded.expires_at WHERE commands.status != 'done'",
                (account, command_id, fingerprint, now, event, now + self.retention),
            )
            if cursor.rowcount == 1:
                return event
            stored: bytes = conn.execute(
                "SELECT event FROM commands WHERE account = ? AND command_id = ?", (account, command_id)
            ).fetchone()[0]
            return stored

        return await self.conn.write(op)

    async def forget(self, account: str, command_id: str) -> bool:
        def op(conn: sqlite3.Cursor) -> bool:
            cursor = conn.execute(
                "DELETE FROM commands WHERE account = ? AND command_id = ?", (account, command_id)
            )
            return cursor.rowcount == 1

        return await self.conn.write(op)

    async def renew(self, leases: list[Lease], now: float, lease_seconds: float) -> list[bool]:
        def op(conn: sqlite3.Cursor) -> list[bool]:
            return [
                conn.execute(
                    "UPDATE commands SET lease_until = ? WHERE account = ? AND command_id = ?"
                    " AND status = 'running' AND attempt_started_at = ?",
                    (now + lease_seconds, lease.account, lease.command_id, lease.attempt_started_at),
                ).rowcount
                == 1
                for lease in leases
            ]

        return await self.conn.write(op) if leases else []

    async def prune(self, now: float) -> int:
        def op(conn: sqlite3.Cursor) -> int:
            removed = conn.execute("DELETE FROM commands WHERE expires_at < ?", (now,)).rowcount
            removed += conn.execute("DELETE FROM seen WHERE expires_at < ?", (now,)).rowcount
            # Expired controls, such as entries of workers that died without leaving.
            removed += conn.execute("DELETE FROM controls WHERE expires_at < ?", (now,)).rowcount
            return removed

        return await self.conn.write(op)

    async def close(self) -> None:
        self.conn.close()


_CONTAINS = "SELECT 1 FROM suppressions WHERE account = ? AND number = ?"


class SQLiteSuppressionList:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def add(
        self, account: str, number: str, *, reason: str, source: str, now: float, keep_existing: bool = False
    ) -> None:
        conflict = (
            "DO NOTHING"
            if keep_existing
            else "DO UPDATE SET reason = excluded.reason, source = excluded.source"
        )

        def op(conn: sqlite3.Cursor) -> None:
            conn.execute(
                "INSERT INTO suppressions (account, number, reason, source, created_at) VALUES (?, ?, ?, ?, ?)"
                f" ON CONFLICT (account, number) {conflict}",
                (account, number, reason, source, now),
            )

        return await self.conn.write(op)

    async def remove(self, account: str, number: str, *, source: str | None = None) -> bool:
        def op(conn: sqlite3.Cursor) -> bool:
            return (
                conn.execute(
                    "DELETE FROM suppressions WHERE account = ? AND number = ? AND (? IS NULL OR source = ?)",
                    (account, number, source, source),
                ).rowcount
                == 1
            )

        return await self.conn.write(op)

    async def contains(self, account: str, number: str) -> bool:
        row = self.conn.reader.execute(_CONTAINS, (account, number)).fetchone()
        return row is not None

    def contains_soon(self, account: str, number: str) -> asyncio.Future[bool]:
        """The lookup read in this loop turn's write transaction, with the claim sent in the same turn.

        A lookup on its own is a read transaction of its own: two file locks taken and given
        back (``fcntl``), about ten times the cost of the same read inside the batch's
        transaction. Its answer is ready when the claim's is.
        """

        def op(conn: sqlite3.Cursor) -> bool:
            return conn.execute(_CONTAINS, (account, number)).fetchone() is not None

        return self.conn.write(op)

    async def list(self, account: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT account, number, reason, source, created_at FROM suppressions"
        params: tuple[Any, ...] = ()
        if account is not None:
            query += " WHERE account = ?"
            params = (account,)
        rows = self.conn.execute(query + " ORDER BY account, number", params).fetchall()
        return [
            dict(zip(("account", "number", "reason", "source", "created_at"), row, strict=True))
            for row in rows
        ]


class SQLiteDeduper:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def first_time(self, key: str, now: float, ttl_seconds: float) -> bool:
        def op(conn: sqlite3.Cursor) -> bool:
            conn.execute("DELETE FROM seen WHERE key = ? AND expires_at < ?", (key, now))
            cursor = conn.execute(
                "INSERT OR IGNORE INTO seen (key, expires_at) VALUES (?, ?)", (key, now + ttl_seconds)
            )
            return cursor.rowcount == 1

        return await self.conn.write(op)

    async def forget(self, key: str) -> None:
        def op(conn: sqlite3.Cursor) -> None:
            conn.execute("DELETE FROM seen WHERE key = ?", (key,))

        return await self.conn.write(op)


class SQLiteControlStore:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def put_control(self, key: str, value: dict[str, Any], expires_at: float) -> None:
        def op(conn: sqlite3.Cursor) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO controls (key, value, expires_at) VALUES (?, ?, ?)",
                (key, orjson.dumps(value), expires_at),
            )

        return await self.conn.write(op)

    async def remove_control(self, key: str) -> bool:
        def op(conn: sqlite3.Cursor) -> bool:
            return conn.execute("DELETE FROM controls WHERE key = ?", (key,)).rowcount == 1

        return await self.conn.write(op)

    async def controls(self, now: float) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute("SELECT key, value FROM controls WHERE expires_at > ?", (now,)).fetchall()
        return {key: orjson.loads(value) for key, value in rows}

    async def peek(self, account: str, command_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT status, attempts, first_attempt_at, attempt_started_at, event FROM commands"
            " WHERE account = ? AND command_id = ?",
            (account, command_id),
        ).fetchone()
        if row is None:
            return None
        status, attempts, first, started, event = row
        return {
            "status": status,
            "attempts": attempts,
            "first_attempt_at": first,
            "attempt_started_at": started,
            "event": None if event is None else orjson.loads(event),
        }


class SQLiteBreakerStore:
    """Breakers shared by the workers on this host (one file)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def breaker(self, key: str) -> BreakerRecord | None:
        row = self.conn.execute(
            "SELECT open_until, probe_until FROM breakers WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else BreakerRecord(row[0], row[1])

    async def trip(self, key: str, open_until: float) -> None:
        def op(conn: sqlite3.Cursor) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO breakers (key, open_until, probe_until) VALUES (?, ?, 0)",
                (key, open_until),
            )

        await self.conn.write(op)

    async def take_probe(self, key: str, now: float, probe_until: float) -> tuple[bool, BreakerRecord | None]:
        def op(conn: sqlite3.Cursor) -> tuple[bool, BreakerRecord | None]:
            granted = (
                conn.execute(
                    "UPDATE breakers SET probe_until = ? WHERE key = ? AND open_until <= ? AND probe_until <= ?",
                    (probe_until, key, now, now),
                ).rowcount
                == 1
            )
            row = conn.execute(
                "SELECT open_until, probe_until FROM breakers WHERE key = ?", (key,)
            ).fetchone()
            return granted, None if row is None else BreakerRecord(row[0], row[1])

        return await self.conn.write(op)

    async def reset(self, key: str) -> None:
        def op(conn: sqlite3.Cursor) -> None:
            conn.execute("DELETE FROM breakers WHERE key = ?", (key,))

        await self.conn.write(op)
