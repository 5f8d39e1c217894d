"""PostgreSQL backend: shared by workers on many hosts, and it survives restarts.

Every decision is one SQL statement, atomic on the server:

- ``claim`` is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``: the row is
  created, or taken over when the record expired or a retry/continuation is
  due, and the ``WHERE`` is evaluated on the latest committed row under its
  row lock, so two workers can never both acquire. A ``cur`` CTE reads the row
  first only to *skip* the upsert when it cannot acquire (done, busy, another
  fingerprint): a replay is then a pure read, with no row lock and no commit
  to flush. If that read was stale (a concurrent change between the statement's
  snapshot and the lock), the statement reports nothing and is asked again.
- ``take_over`` and ``release`` are conditional ``UPDATE``\\s; ``complete`` is
  an upsert that keeps the first stored event.

Connections come from a pool. During an outage (a restart, a fail-over) an
operation waits up to ``outage_wait_seconds`` for the server, then raises
:class:`StoreUnavailable`; the dispatcher leaves the command unacked and the
broker redelivers it. Asking again after a lost connection is safe for every
operation: it gives what a redelivery would (a claim that did commit shows up
as our own live lease, so the command waits for it, it is never run twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson

from worker.store.base import Claim, ClaimStatus
from worker.store.migrations.postgres import migrate

POOL_MAX_SIZE = 20
CONNECT_TIMEOUT_SECONDS = 3.0
COMMAND_TIMEOUT_SECONDS = 10.0
OUTAGE_WAIT_SECONDS = 10.0
"""How long an operation waits for the server to come back: a restart takes a few seconds."""
PRUNE_BATCH = 5000
"""Rows deleted per statement, so pruning never holds many row locks or a long transaction."""
_STALE_READ_RETRIES = 5

# The server went away or is not accepting connections yet: worth asking again.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


class StoreUnavailable(ConnectionError):
    """The database did not answer within the outage wait."""


_CLAIM = """
WITH cur AS (
    SELECT fingerprint, status, attempts, first_attempt_at, attempt_started_at, lease_until, state, event, expires_at
    FROM switchboard_commands WHERE account = $1 AND command_id = $2
), acquired AS (
    INSERT INTO switchboard_commands AS c (account, command_id, fingerprint, status, attempts, first_attempt_at,
                                           attempt_started_at, lease_until, expires_at)
    SELECT $1, $2, $3, 'running', 1, $4::float8, $4::float8, $5::float8, $6::float8
    WHERE NOT EXISTS (
        SELECT 1 FROM cur WHERE expires_at >= $4 AND NOT (fingerprint = $3 AND status IN ('pending', 'waiting'))
    )
    ON CONFLICT (account, command_id) DO UPDATE SET
        fingerprint = $3,
        status = 'running',
        attempts = CASE WHEN c.expires_at < $4 THEN 1 WHEN c.status = 'pending' THEN c.attempts + 1
                        ELSE c.attempts END,
        first_attempt_at = CASE WHEN c.expires_at < $4 THEN $4 ELSE c.first_attempt_at END,
        attempt_started_at = $4,
        lease_until = $5,
        state = CASE WHEN c.expires_at < $4 THEN NULL ELSE c.state END,
        event = NULL,
        expires_at = CASE WHEN c.expires_at < $4 THEN $6 ELSE c.expires_at END
    WHERE c.expires_at < $4 OR (c.fingerprint = $3 AND c.status IN ('pending', 'waiting'))
    RETURNING 'acquired'::text AS outcome, attempts, first_attempt_at, attempt_started_at, lease_until, state,
              NULL::bytea AS event
)
SELECT * FROM acquired
UNION ALL
SELECT CASE WHEN expires_at < $4 OR status IN ('pending', 'waiting') AND fingerprint = $3 THEN 'stale'
            WHEN fingerprint <> $3 THEN 'conflict'
            WHEN status = 'done' THEN 'done'
            WHEN lease_until > $4 THEN 'busy'
            ELSE 'expired' END,
       attempts, first_attempt_at, attempt_started_at, lease_until, state, event
FROM cur WHERE NOT EXISTS (SELECT 1 FROM acquired)
"""

_TAKE_OVER = """
UPDATE switchboard_commands SET attempts = attempts + 1, attempt_started_at = $3, lease_until = $4
WHERE account = $1 AND command_id = $2 AND status = 'running' AND lease_until = $5
RETURNING attempts, first_attempt_at, state
"""

_RELEASE = """
UPDATE switchboard_commands SET status = $3, lease_until = NULL, state = $4
WHERE account = $1 AND command_id = $2 AND status = 'running'
"""

# ``ours`` tells whether this call stored its event; the bytes come back only when another one won.
_COMPLETE = """
WITH cur AS (
    SELECT status, event FROM switchboard_commands WHERE account = $1 AND command_id = $2
), stored AS (
    INSERT INTO switchboard_commands AS c (account, command_id, fingerprint, status, attempts, first_attempt_at,
                                           event, expires_at)
    SELECT $1, $2, $3, 'done', 0, $5::float8, $4::bytea, $6::float8
    WHERE NOT EXISTS (SELECT 1 FROM cur WHERE status = 'done')
    ON CONFLICT (account, command_id) DO UPDATE SET
        status = 'done', event = excluded.event, lease_until = NULL, expires_at = excluded.expires_at
    WHERE c.status <> 'done'
    RETURNING true AS ours, NULL::bytea AS event
)
SELECT * FROM stored
UNION ALL
SELECT false, event FROM cur WHERE status = 'done' AND NOT EXISTS (SELECT 1 FROM stored)
"""

_PRUNE = """
WITH doomed AS (
    SELECT {key} FROM {table} WHERE expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED
)
DELETE FROM {table} t USING doomed d WHERE {join}
"""
_PRUNE_COMMANDS = _PRUNE.format(
    table="switchboard_commands",
    key="account, command_id",
    join="t.account = d.account AND t.command_id = d.command_id",
)
_PRUNE_SEEN = _PRUNE.format(table="switchboard_seen", key="key", join="t.key = d.key")
_PRUNE_CONTROLS = _PRUNE.format(table="switchboard_controls", key="key", join="t.key = d.key")

_STATUS = {
    "acquired": ClaimStatus.ACQUIRED,
    "done": ClaimStatus.DONE,
    "busy": ClaimStatus.BUSY,
    "expired": ClaimStatus.EXPIRED,
    "conflict": ClaimStatus.CONFLICT,
}


class Database:
    """A connection pool whose calls ride out a server restart (see the module docstring)."""

    def __init__(self, pool: Any, *, outage_wait_seconds: float = OUTAGE_WAIT_SECONDS) -> None:
        self.pool = pool
        self.outage_wait_seconds = outage_wait_seconds

    async def call(self, method: str, sql: str, *args: Any) -> Any:
        """``connection.<method>(sql, *args)`` on a pooled connection, asked again while the server is away."""
        deadline = time.monotonic() + self.outage_wait_seconds
        delay = 0.05
        while True:
            try:
                return await self._once(method, sql, args)
            except TimeoutError:
                raise  # the server is up but slow (command timeout): asking again would pile on
            except _CONNECTION_LOST as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(
                        f"PostgreSQL store unavailable: {exc.__class__.__name__}: {exc}"
                    ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _once(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        try:
            conn = await self.pool.acquire()
        except TimeoutError as exc:  # connecting timed out (a command timeout is not retried)
            raise ConnectionError("timed out connecting") from exc
        try:
            result = await getattr(conn, method)(sql, *args)
        except BaseException as exc:
            broken = isinstance(exc, (*_CONNECTION_LOST, asyncpg.InternalClientError)) or _closed(conn)
            if broken or not isinstance(exc, asyncpg.PostgresError):
                # Not a plain SQL error: the connection may be mid-protocol (a restart hit it
                # during a call), so it is dropped rather than handed to the next caller.
                _terminate(conn)
            await self._release(conn)
            if broken and not isinstance(exc, _CONNECTION_LOST):
                raise ConnectionError(f"connection broken: {exc}") from exc
            raise
        await self._release(conn)
        return result

    async def _release(self, conn: Any) -> None:
        # A connection that was lost or cannot be reset is dropped by asyncpg; the pool opens a new one.
        with contextlib.suppress(Exception):
            await self.pool.release(conn)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout=5)
        except TimeoutError:
            self.pool.terminate()


def _closed(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool already took back a connection that was lost
        return True


def _terminate(conn: Any) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # already released to the pool when it was lost
        conn.terminate()


async def _reset(conn: Any) -> None:
    """Before a connection goes back to the pool. asyncpg's default runs ``RESET ALL; UNLISTEN *; ...``
    every time, a second round trip per operation; nothing here changes session state, and a
    connection interrupted mid-call is terminated, so only an open transaction needs undoing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def connect(url: str, *, min_size: int = 1, max_size: int = POOL_MAX_SIZE) -> Database:
    """Open a pool on ``postgresql://...`` and migrate the schema."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=CONNECT_TIMEOUT_SECONDS,
        command_timeout=COMMAND_TIMEOUT_SECONDS,
        max_inactive_connection_lifetime=300.0,
        reset=_reset,
    )
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    except BaseException:
        pool.terminate()
        raise
    return Database(pool)


def _json(value: dict[str, Any] | None) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def _state(blob: bytes | None) -> dict[str, Any] | None:
    return None if blob is None else orjson.loads(blob)


def _count(status: str) -> int:
    """``"DELETE 12"`` -> 12."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresIdempotencyStore:
    def __init__(self, db: Database, retention_seconds: float) -> None:
        self.db = db
        self.retention = retention_seconds

    async def claim(
        self, account: str, command_id: str, fingerprint: str, now: float, lease_seconds: float
    ) -> Claim:
        args = (account, command_id, fingerprint, now, now + lease_seconds, now + self.retention)
        for _ in range(_STALE_READ_RETRIES):
            row = await self.db.call("fetchrow", _CLAIM, *args)
            if row is None or row["outcome"] == "stale":
                continue  # another worker changed the record mid-statement: ask again
            status = _STATUS[row["outcome"]]
            keep_state = status in (ClaimStatus.ACQUIRED, ClaimStatus.BUSY, ClaimStatus.EXPIRED)
            return Claim(
                status,
                row["attempts"],
                row["first_attempt_at"],
                row["attempt_started_at"],
                row["lease_until"],
                _state(row["state"]) if keep_state else None,
                row["event"] if status is ClaimStatus.DONE else None,
            )
        raise StoreUnavailable("claim: the record kept changing under concurrent workers")

    async def take_over(
        self, account: str, command_id: str, expected_lease_until: float, now: float, lease_seconds: float
    ) -> Claim:
        lease_until = now + lease_seconds
        row = await self.db.call(
            "fetchrow", _TAKE_OVER, account, command_id, now, lease_until, expected_lease_until
        )
        if row is None:
            return Claim(ClaimStatus.BUSY)
        return Claim(
            ClaimStatus.ACQUIRED,
            row["attempts"],
            row["first_attempt_at"],
            now,
            lease_until,
            _state(row["state"]),
        )

    async def release(
        self, account: str, command_id: str, state: dict[str, Any] | None = None, *, waiting: bool = False
    ) -> None:
        status = "waiting" if waiting else "pending"
        await self.db.call("execute", _RELEASE, account, command_id, status, _json(state))

    async def complete(
        self, account: str, command_id: str, fingerprint: str, event: bytes, now: float
    ) -> bytes:
        args = (account, command_id, fingerprint, event, now, now + self.retention)
        for _ in range(_STALE_READ_RETRIES):
            row = await self.db.call("fetchrow", _COMPLETE, *args)
            if row is None:
                continue  # another worker completed it mid-statement: ask again to read its event
            if row["ours"]:
                return event
            stored: bytes = row["event"]
            return stored
        raise StoreUnavailable("complete: the record kept changing under concurrent workers")

    async def forget(self, account: str, command_id: str) -> bool:
        status = await self.db.call(
            "execute",
            "DELETE FROM switchboard_commands WHERE account = $1 AND command_id = $2",
            account,
            command_id,
        )
        return _count(status) == 1

    async def prune(self, now: float) -> int:
        removed = 0
        for statement in (_PRUNE_COMMANDS, _PRUNE_SEEN, _PRUNE_CONTROLS):
            while True:
                deleted = _count(await self.db.call("execute", statement, now, PRUNE_BATCH))
                removed += deleted
                if deleted < PRUNE_BATCH:
                    break
        return removed

    async def close(self) -> None:
        await self.db.close()


_ADD_SUPPRESSION = """
INSERT INTO switchboard_suppressions (account, number, reason, source, created_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (account, number) DO UPDATE SET reason = excluded.reason, source = excluded.source
"""


class PostgresSuppressionList:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, account: str, number: str, *, reason: str, source: str, now: float) -> None:
        await self.db.call("execute", _ADD_SUPPRESSION, account, number, reason, source, now)

    async def add_many(self, rows: Iterable[tuple[str, str, str, str, float]]) -> None:
        """Add (account, number, reason, source, created_at) rows, pipelined in one transaction."""
        await self.db.call("executemany", _ADD_SUPPRESSION, list(rows))

    async def remove(self, account: str, number: str) -> bool:
        status = await self.db.call(
            "execute",
            "DELETE FROM switchboard_suppressions WHERE account = $1 AND number = $2",
            account,
            number,
        )
        return _count(status) == 1

    async def contains(self, account: str, number: str) -> bool:
        found = await self.db.call(
            "fetchval",
            "SELECT true FROM switchboard_suppressions WHERE account = $1 AND number = $2",
            account,
            number,
        )
        return found is not None

    async def list(self, account: str | None = None) -> list[dict[str, Any]]:
        rows = await self.db.call(
            "fetch",
            "SELECT account, number, reason, source, created_at FROM switchboard_suppressions"
            " WHERE $1::text IS NULL OR account = $1 ORDER BY account, number",
            account,
        )
        return [dict(row) for row in rows]


class PostgresDeduper:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def first_time(self, key: str, now: float, ttl_seconds: float) -> bool:
        fresh = await self.db.call(
            "fetchval",
            "INSERT INTO switchboard_seen AS s (key, expires_at) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE"
            " SET expires_at = excluded.expires_at WHERE s.expires_at < $3 RETURNING true",
            key,
            now + ttl_seconds,
            now,
        )
        return fresh is not None

    async def forget(self, key: str) -> None:
        """Drop a key, so the retry of a delivery that failed is not taken for a duplicate."""
        await self.db.call("execute", "DELETE FROM switchboard_seen WHERE key = $1", key)


class PostgresControlStore:
    """Operator controls (pause, cancel); every worker reads them all twice a second."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put_control(self, key: str, value: dict[str, Any], expires_at: float) -> None:
        await self.db.call(
            "execute",
            "INSERT INTO switchboard_controls (key, value, expires_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            key,
            orjson.dumps(value),
            expires_at,
        )

    async def remove_control(self, key: str) -> bool:
        status = await self.db.call("execute", "DELETE FROM switchboard_controls WHERE key = $1", key)
        return _count(status) == 1

    async def controls(self, now: float) -> dict[str, dict[str, Any]]:
        rows = await self.db.call(
            "fetch", "SELECT key, value FROM switchboard_controls WHERE expires_at > $1", now
        )
        return {row["key"]: orjson.loads(row["value"]) for row in rows}

    async def peek(self, account: str, command_id: str) -> dict[str, Any] | None:
        row = await self.db.call(
            "fetchrow",
            "SELECT status, attempts, first_attempt_at, attempt_started_at, event FROM switchboard_commands"
            " WHERE account = $1 AND command_id = $2",
            account,
            command_id,
        )
        if row is None:
            return None
        return {
            "status": row["status"],
            "attempts": row["attempts"],
            "first_attempt_at": row["first_attempt_at"],
            "attempt_started_at": row["attempt_started_at"],
            "event": None if row["event"] is None else orjson.loads(row["event"]),
        }
