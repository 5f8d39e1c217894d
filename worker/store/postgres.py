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

The hot calls (``claim``, ``complete``, suppression ``contains``) made while
the previous statement of their kind was out are sent together (see :class:`Batcher`): one
set-based statement over a JSON array of rows per kind, on one pooled
connection, one commit for all of them; the same statements as above, for N
keys, each key found by its primary key (see ``_LOOKUP``). A key submitted
twice in one turn waits for the batch carrying the first.

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
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import asyncpg
import orjson

from worker.store.base import BreakerRecord, Claim, ClaimStatus, Lease
from worker.store.migrations.postgres import migrate

POOL_MAX_SIZE = 20
"""Connections per process at most, unless ``SWITCHBOARD_POSTGRES_POOL_SIZE`` says otherwise."""
STATEMENT_CACHE_SIZE = 100
"""asyncpg's default; 0 behind PgBouncer in transaction mode (before 1.21, or without max_prepared_statements)."""
CONNECT_TIMEOUT_SECONDS = 3.0
COMMAND_TIMEOUT_SECONDS = 10.0
OUTAGE_WAIT_SECONDS = 10.0
"""How long an operation waits for the server to come back: a restart takes a few seconds."""
PRUNE_BATCH = 5000
"""Rows deleted per statement, so pruning never holds many row locks or a long transaction."""
_STALE_READ_RETRIES = 5
KEPT_CONNECTIONS = 4
"""Connections kept out of the pool between calls, ready for the next (see :class:`Database`)."""
BATCH_MAX = 500
"""Calls per statement at most: the arrays stay small and one statement's row locks few."""

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
  AND ($5::double precision IS NULL OR attempt_started_at = $5)
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

# The statements above for N keys. ``input`` is in (account, command_id) order, so concurrent batches
# lock shared rows in the same order; no key appears twice (ON CONFLICT cannot update a row twice).
# The rows arrive as one JSON array of arrays (see :func:`_rows`): asyncpg encodes an array parameter
# element by element, with abstract-class checks on each, several times the CPU of orjson for the lot.
# Read as jsonb, parsed once: as json, every ``->>`` parses its element's text again (EXPLAIN ANALYZE,
# 38 outcomes of 600 bytes: 2.0 -> 1.0 ms a statement). An outcome's event goes beside the rows as
# a bytea[] (the n-th row's is its n-th element), not as hex inside them.
_INPUT = "SELECT {} FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, n)"

# The stored row of each input key. As a plain join, the planner takes jsonb_array_elements for
# 100 rows and, on a table of tens of thousands, hashes all of it: a scan of the whole table in
# every statement (seen with EXPLAIN: 2-5 ms of server CPU a batch of 8 at 20,000 rows, growing
# with the table). LIMIT 1 (the key is unique) keeps the subquery from being merged into a join,
# so each key is one primary-key lookup whatever the table's size.
_LOOKUP = (
    "SELECT * FROM switchboard_commands c WHERE c.account = i.account AND c.command_id = i.command_id LIMIT 1"
)

_CLAIM_MANY = (
    """
WITH input AS ("""
    + _INPUT.format(
        "e->>0 AS account, e->>1 AS command_id, e->>2 AS fingerprint, (e->>3)::float8 AS now,"
        " (e->>4)::float8 AS lease_until, (e->>5)::float8 AS expires_at, n"
    )
    + """
), cur AS (
    SELECT c.account, c.command_id, c.fingerprint, c.status, c.attempts, c.first_attempt_at,
           c.attempt_started_at, c.lease_until, c.state, c.event, c.expires_at, i.fingerprint AS asked, i.now
    FROM input i CROSS JOIN LATERAL ("""
    + _LOOKUP
    + """) c
), acquired AS (
    INSERT INTO switchboard_commands AS c (account, command_id, fingerprint, status, attempts, first_attempt_at,
                                           attempt_started_at, lease_until, expires_at)
    SELECT i.account, i.command_id, i.fingerprint, 'running', 1, i.now, i.now, i.lease_until, i.expires_at
    FROM input i
    WHERE NOT EXISTS (
        SELECT 1 FROM cur WHERE cur.account = i.account AND cur.command_id = i.command_id
        AND cur.expires_at >= i.now AND NOT (cur.fingerprint = i.fingerprint AND cur.status IN ('pending', 'waiting'))
    )
    ORDER BY i.account, i.command_id
    ON CONFLICT (account, command_id) DO UPDATE SET
        fingerprint = excluded.fingerprint,
        status = 'running',
        attempts = CASE WHEN c.expires_at < excluded.attempt_started_at THEN 1
                        WHEN c.status = 'pending' THEN c.attempts + 1
                        ELSE c.attempts END,
        first_attempt_at = CASE WHEN c.expires_at < excluded.attempt_started_at THEN excluded.attempt_started_at
                                ELSE c.first_attempt_at END,
        attempt_started_at = excluded.attempt_started_at,
        lease_until = excluded.lease_until,
        state = CASE WHEN c.expires_at < excluded.attempt_started_at THEN NULL ELSE c.state END,
        event = NULL,
        expires_at = CASE WHEN c.expires_at < excluded.attempt_started_at THEN excluded.expires_at
                          ELSE c.expires_at END
    WHERE c.expires_at < excluded.attempt_started_at
       OR (c.fingerprint = excluded.fingerprint AND c.status IN ('pending', 'waiting'))
    RETURNING c.account, c.command_id, 'acquired'::text AS outcome, c.attempts, c.first_attempt_at,
              c.attempt_started_at, c.lease_until, c.state, NULL::bytea AS event
), fresh AS (
    -- Acquired as a new command is (attempt 1, first and started now, no state): the caller knows all that.
    SELECT a.*, a.attempts = 1 AND a.first_attempt_at = i.now AND a.state IS NULL AS fresh, i.n
    FROM acquired a JOIN input i ON i.account = a.account AND i.command_id = a.command_id
)
SELECT NULL::text AS account, NULL::text AS command_id, 'fresh'::text AS outcome, NULL::integer AS attempts,
       NULL::float8 AS first_attempt_at, NULL::float8 AS attempt_started_at, NULL::float8 AS lease_until,
       NULL::bytea AS state, NULL::bytea AS event, array_agg(n) AS fresh
FROM fresh WHERE fresh
UNION ALL
SELECT account, command_id, outcome, attempts, first_attempt_at, attempt_started_at, lease_until, state, event, NULL
FROM fresh WHERE NOT fresh
UNION ALL
SELECT account, command_id,
       CASE WHEN expires_at < now OR status IN ('pending', 'waiting') AND fingerprint = asked THEN 'stale'
            WHEN fingerprint <> asked THEN 'conflict'
            WHEN status = 'done' THEN 'done'
            WHEN lease_until > now THEN 'busy'
            ELSE 'expired' END,
       attempts, first_attempt_at, attempt_started_at, lease_until, state, event, NULL
FROM cur
WHERE NOT EXISTS (SELECT 1 FROM acquired a WHERE a.account = cur.account AND a.command_id = cur.command_id)
"""
)
"""Rows: one with the positions (from 1) of the keys acquired as new commands, and one per other key answered."""

_COMPLETE_MANY = (
    """
WITH input AS ("""
    + _INPUT.format(
        "e->>0 AS account, e->>1 AS command_id, e->>2 AS fingerprint, ($2::bytea[])[n] AS event,"
        " (e->>3)::float8 AS now, (e->>4)::float8 AS expires_at"
    )
    + """
), cur AS (
    SELECT c.account, c.command_id, c.status, c.event
    FROM input i CROSS JOIN LATERAL ("""
    + _LOOKUP
    + """) c
), stored AS (
    INSERT INTO switchboard_commands AS c (account, command_id, fingerprint, status, attempts, first_attempt_at,
                                           event, expires_at)
    SELECT i.account, i.command_id, i.fingerprint, 'done', 0, i.now, i.event, i.expires_at
    FROM input i
    WHERE NOT EXISTS (
        SELECT 1 FROM cur WHERE cur.account = i.account AND cur.command_id = i.command_id AND cur.status = 'done'
    )
    ORDER BY i.account, i.command_id
    ON CONFLICT (account, command_id) DO UPDATE SET
        status = 'done', event = excluded.event, lease_until = NULL, expires_at = excluded.expires_at
    WHERE c.status <> 'done'
    RETURNING c.account, c.command_id
)
SELECT NULL::text AS account, NULL::text AS command_id, NULL::bytea AS event, count(*)::int AS stored FROM stored
UNION ALL
SELECT account, command_id, event, NULL FROM cur
WHERE status = 'done' AND NOT EXISTS (SELECT 1 FROM stored s WHERE s.account = cur.account AND s.command_id = cur.command_id)
"""
)
"""Rows: one with how many events were stored, and one per key whose event another call stored first."""

_CONTAINS_MANY = (
    """
WITH input AS ("""
    + _INPUT.format("e->>0 AS account, e->>1 AS number")
    + """)
SELECT s.account, s.number FROM input i CROSS JOIN LATERAL (
    -- As _LOOKUP: one primary-key lookup a number, not a scan of a mid-sized list.
    SELECT account, number FROM switchboard_suppressions s WHERE s.account = i.account AND s.number = i.number LIMIT 1
) s
"""
)

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


Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Calls made while the previous statement was out, sent as one batch.

    ``send(items)`` runs one statement for the whole batch and returns one
    result per item, in order. Its failure (after ``Database.call``'s own
    asking again) fails every call of the batch with the same exception.
    With ``key``, an item whose key is already in the batch waits for the
    next one, sent after this one is done: a statement may not update one
    row twice, and the second call must see what the first did.

    One statement at a time: calls made while one is out wait for it and go
    together in the next. The server's CPU is mostly per statement (its
    commit flushes the WAL), so under load the batches grow with the load
    and the cost a call falls, instead of many small statements running
    side by side; a quiet worker still sends each call on the next turn.
    """

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[list[Result]]],
        key: Callable[[Item], Hashable] | None = None,
    ) -> None:
        self._send = send
        self._key = key
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        # Set and cleared by the flushing task itself: a task's done callbacks run a turn
        # after it ends, and a call made in between must start the next one.
        self._flushing = False

    def submit(self, item: Item) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._flushing:
            self._start()
        return future

    def _start(self) -> None:
        # A task, not a callback that starts one: its first step (on the next loop turn, when
        # every call of this turn is in) already sends the statement. Under load a loop turn
        # is milliseconds, and a command waits through three store round trips.
        self._flushing = True
        task = asyncio.get_running_loop().create_task(self._flush())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _flush(self) -> None:
        """Send what is pending, then what came meanwhile, until nothing is left."""
        try:
            await self._send_all()
        except BaseException as exc:
            # The loop is closing (cancelled), or a bug of ours: the calls still waiting see it
            # too, rather than wait for ever or be sent by a task that fails the same way.
            for _, future in self._pending:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            self._pending = []
            raise
        finally:
            # Nothing is pending here: the loop ends only when nothing is left, with no await
            # between that check and this line.
            self._flushing = False

    async def _send_all(self) -> None:
        while True:
            calls, self._pending = self._pending, []
            batch: list[tuple[Item, asyncio.Future[Result]]] = []
            later: list[tuple[Item, asyncio.Future[Result]]] = []
            seen: set[Hashable] = set()
            try:
                for item, future in calls:
                    if future.done():  # cancelled by its caller before it was sent
                        continue
                    if self._key is not None:
                        key = self._key(item)
                        if key in seen:
                            later.append((item, future))
                            continue
                        seen.add(key)
                    if len(batch) < BATCH_MAX:
                        batch.append((item, future))
                    else:
                        later.append((item, future))
            except BaseException:
                self._pending[:0] = calls  # for _flush to fail them
                raise
            self._pending[:0] = later  # before what came meanwhile: calls keep their order
            if batch:
                await self._run(batch)
            if not self._pending:
                return
            # One turn: the callers of this answer run, and what they ask joins the next batch.
            await asyncio.sleep(0)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise  # cancelled: the calls saw it, and so does the task
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def wait_sent(self) -> None:
        """Until every batch in flight is done (before closing the pool)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


class Database:
    """A connection pool whose calls ride out a server restart (see the module docstring)."""

    def __init__(self, pool: Any, *, outage_wait_seconds: float = OUTAGE_WAIT_SECONDS) -> None:
        self.pool = pool
        self.outage_wait_seconds = outage_wait_seconds
        # Connections kept out of the pool between calls: asyncpg's acquire and release (a queue,
        # a proxy, a shielded task and the reset) cost about as much CPU as the call itself. At most
        # one fewer than the pool holds, so a caller waiting on the pool is always given one back.
        self._kept: list[Any] = []
        self._keep = min(KEPT_CONNECTIONS, pool.get_max_size() - 1)

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
        conn = self._kept.pop() if self._kept else None
        if conn is not None and _closed(conn):  # lost while kept: the pool reconnects its holder
            await self._release(conn)
            conn = None
        if conn is None:
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
        if len(self._kept) < self._keep and not conn.is_in_transaction():
            self._kept.append(conn)  # as the pool's reset would: only an open transaction needs undoing
        else:
            await self._release(conn)
        return result

    async def _release(self, conn: Any) -> None:
        # A connection that was lost or cannot be reset is dropped by asyncpg; the pool opens a new one.
        with contextlib.suppress(Exception):
            await self.pool.release(conn)

    async def close(self) -> None:
        kept, self._kept, self._keep = self._kept, [], 0
        for conn in kept:
            await self._release(conn)
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


async def connect(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = POOL_MAX_SIZE,
    statement_cache_size: int = STATEMENT_CACHE_SIZE,
) -> Database:
    """Open a pool on ``postgresql://...`` and migrate the schema."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        statement_cache_size=statement_cache_size,
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


_ClaimArgs = tuple[str, str, str, float, float, float]
_CompleteArgs = tuple[str, str, str, bytes, float, float]


def _key(item: tuple[Any, ...]) -> tuple[str, str]:
    return (item[0], item[1])


def _rows(items: list[Any]) -> str:
    """Rows (tuples of str and float) -> the JSON array of arrays the ``_MANY`` statements take.

    A float goes as its shortest repr, which jsonb keeps as that exact decimal and which reads
    back to the same double, so a time stored from here compares equal to the same float sent
    as a parameter later (take_over's lease).
    """
    return orjson.dumps(items).decode()


def _claim(row: Any) -> Claim:
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


class PostgresIdempotencyStore:
    def __init__(self, db: Database, retention_seconds: float) -> None:
        self.db = db
        self.retention = retention_seconds
        self._claims: Batcher[_ClaimArgs, Claim] = Batcher(self._claim_many, key=_key)
        self._completes: Batcher[_CompleteArgs, bytes] = Batcher(self._complete_many, key=_key)

    async def claim(
        self, account: str, command_id: str, fingerprint: str, now: float, lease_seconds: float
    ) -> Claim:
        return await self._claims.submit(
            (account, command_id, fingerprint, now, now + lease_seconds, now + self.retention)
        )

    async def _claim_many(self, items: list[_ClaimArgs]) -> list[Claim]:
        if len(items) == 1:
            return [await self._claim_one(items[0])]
        try:
            rows = await self.db.call("fetch", _CLAIM_MANY, _rows(items))
        except asyncpg.DeadlockDetectedError:
            # Another worker's batch locked some of the same keys: each on its own instead.
            return list(await asyncio.gather(*(self._claim_one(item) for item in items)))
        fresh: list[int] = []
        found: dict[tuple[str, str], Any] = {}
        for row in rows:
            if row[0] is None:
                fresh = row[9] or []
            else:
                found[(row[0], row[1])] = row
        if len(fresh) == len(items):  # the usual case: all new commands, one short row back
            return [Claim(ClaimStatus.ACQUIRED, 1, item[3], item[3], item[4]) for item in items]
        new = set(fresh)
        claims: list[Claim] = []
        for position, item in enumerate(items, 1):
            if position in new:
                claims.append(Claim(ClaimStatus.ACQUIRED, 1, item[3], item[3], item[4]))
                continue
            row = found.get(_key(item))
            if row is None or row["outcome"] == "stale":
                # Another worker changed the record mid-statement: ask again for this key alone.
                claims.append(await self._claim_one(item))
            else:
                claims.append(_claim(row))
        return claims

    async def _claim_one(self, args: _ClaimArgs) -> Claim:
        for _ in range(_STALE_READ_RETRIES):
            row = await self.db.call("fetchrow", _CLAIM, *args)
            if row is None or row["outcome"] == "stale":
                continue  # another worker changed the record mid-statement: ask again
            return _claim(row)
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
        self,
        account: str,
        command_id: str,
        state: dict[str, Any] | None = None,
        *,
        waiting: bool = False,
        started: float | None = None,
    ) -> None:
        status = "waiting" if waiting else "pending"
        await self.db.call("execute", _RELEASE, account, command_id, status, _json(state), started)

    async def complete(
        self, account: str, command_id: str, fingerprint: str, event: bytes, now: float
    ) -> bytes:
        return await self._completes.submit(
            (account, command_id, fingerprint, event, now, now + self.retention)
        )

    async def _complete_many(self, items: list[_CompleteArgs]) -> list[bytes]:
        if len(items) == 1:
            return [await self._complete_one(items[0])]
        try:
            rows = await self.db.call(
                "fetch",
                _COMPLETE_MANY,
                _rows([(a, c, f, n, e) for a, c, f, _, n, e in items]),
                [item[3] for item in items],
            )
        except asyncpg.DeadlockDetectedError:
            return list(await asyncio.gather(*(self._complete_one(item) for item in items)))
        stored = 0
        earlier: dict[tuple[str, str], bytes] = {}  # the keys whose outcome another call stored first
        for row in rows:
            if row[0] is None:
                stored = row[3]
            else:
                earlier[(row[0], row[1])] = row[2]
        if stored == len(items):  # the usual case: one short row back, not one per key
            return [item[3] for item in items]
        if stored + len(earlier) == len(items):
            return [earlier.get((item[0], item[1]), item[3]) for item in items]
        # Some key was completed by another worker mid-statement: ask again for each key not known to
        # be another's; asking again for one stored here reads back its own event.
        events: list[bytes] = []
        for item in items:
            event = earlier.get((item[0], item[1]))
            events.append(await self._complete_one(item) if event is None else event)
        return events

    async def _complete_one(self, args: _CompleteArgs) -> bytes:
        for _ in range(_STALE_READ_RETRIES):
            row = await self.db.call("fetchrow", _COMPLETE, *args)
            if row is None:
                continue  # another worker completed it mid-statement: ask again to read its event
            if row["ours"]:
                return args[3]
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

    async def renew(self, leases: list[Lease], now: float, lease_seconds: float) -> list[bool]:
        if not leases:
            return []
        rows = await self.db.call(
            "fetch",
            _RENEW,
            [lease.account for lease in leases],
            [lease.command_id for lease in leases],
            [lease.attempt_started_at for lease in leases],
            now + lease_seconds,
        )
        renewed = {(row["account"], row["command_id"]) for row in rows}
        return [(lease.account, lease.command_id) in renewed for lease in leases]

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
        await self._claims.wait_sent()
        await self._completes.wait_sent()
        await self.db.close()


_RENEW = """
UPDATE switchboard_commands AS c SET lease_until = $4
FROM unnest($1::text[], $2::text[], $3::double precision[]) AS i (account, command_id, started)
WHERE c.account = i.account AND c.command_id = i.command_id AND c.status = 'running'
  AND c.attempt_started_at = i.started
RETURNING c.account, c.command_id
"""

_TAKE_PROBE = """
WITH taken AS (
    UPDATE switchboard_breakers SET probe_until = $3
    WHERE key = $1 AND open_until <= $2 AND probe_until <= $2
    RETURNING open_until, probe_until
)
SELECT true AS granted, open_until, probe_until FROM taken
UNION ALL
SELECT false, open_until, probe_until FROM switchboard_breakers WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM taken)
"""

_ADD_SUPPRESSION = """
INSERT INTO switchboard_suppressions (account, number, reason, source, created_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (account, number) DO UPDATE SET reason = excluded.reason, source = excluded.source
"""
_ADD_SUPPRESSION_IF_ABSENT = """
INSERT INTO switchboard_suppressions (account, number, reason, source, created_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (account, number) DO NOTHING
"""


class PostgresSuppressionList:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._contains: Batcher[tuple[str, str], bool] = Batcher(self._contains_many)

    async def add(
        self, account: str, number: str, *, reason: str, source: str, now: float, keep_existing: bool = False
    ) -> None:
        query = _ADD_SUPPRESSION_IF_ABSENT if keep_existing else _ADD_SUPPRESSION
        await self.db.call("execute", query, account, number, reason, source, now)

    async def add_many(self, rows: Iterable[tuple[str, str, str, str, float]]) -> None:
        """Add (account, number, reason, source, created_at) rows, pipelined in one transaction."""
        await self.db.call("executemany", _ADD_SUPPRESSION, list(rows))

    async def remove(self, account: str, number: str, *, source: str | None = None) -> bool:
        status = await self.db.call(
            "execute",
            "DELETE FROM switchboard_suppressions WHERE account = $1 AND number = $2"
            " AND ($3::text IS NULL OR source = $3)",
            account,
            number,
            source,
        )
        return _count(status) == 1

    async def contains(self, account: str, number: str) -> bool:
        return await self._contains.submit((account, number))

    def contains_soon(self, account: str, number: str) -> asyncio.Future[bool]:
        return self._contains.submit((account, number))

    async def _contains_many(self, items: list[tuple[str, str]]) -> list[bool]:
        rows = await self.db.call("fetch", _CONTAINS_MANY, _rows(items))
        found = {(row["account"], row["number"]) for row in rows}
        return [item in found for item in items]

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


class PostgresBreakerStore:
    """Breakers shared by the fleet: one row per open breaker."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def breaker(self, key: str) -> BreakerRecord | None:
        row = await self.db.call(
            "fetchrow", "SELECT open_until, probe_until FROM switchboard_breakers WHERE key = $1", key
        )
        return None if row is None else BreakerRecord(row["open_until"], row["probe_until"])

    async def trip(self, key: str, open_until: float) -> None:
        await self.db.call(
            "execute",
            "INSERT INTO switchboard_breakers (key, open_until, probe_until) VALUES ($1, $2, 0)"
            " ON CONFLICT (key) DO UPDATE SET open_until = excluded.open_until, probe_until = 0",
            key,
            open_until,
        )

    async def take_probe(self, key: str, now: float, probe_until: float) -> tuple[bool, BreakerRecord | None]:
        row = await self.db.call("fetchrow", _TAKE_PROBE, key, now, probe_until)
        if row is None:
            return False, None
        return bool(row["granted"]), BreakerRecord(row["open_until"], row["probe_until"])

    async def reset(self, key: str) -> None:
        await self.db.call("execute", "DELETE FROM switchboard_breakers WHERE key = $1", key)
