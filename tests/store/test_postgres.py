"""What only the PostgreSQL store has: migrations, and riding out a server restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.store import postgres_server
from tests.store.conftest import POSTGRES_URL, clean_postgres, drop_postgres_schema
from worker.store import ClaimStatus, Stores, open_stores
from worker.store import postgres as pg
from worker.store.migrations.postgres import LATEST, MIGRATIONS, migrate

pytestmark = pytest.mark.integration

A, FP, LEASE = "acct", "fp", 120.0


async def migration_rows() -> list[int]:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        return [
            row["version"] for row in await conn.fetch("SELECT version FROM switchboard_schema_migrations")
        ]
    finally:
        await conn.close()


class TestMigrations:
    async def test_fleet_starting_at_once_migrates_once(self) -> None:
        """Eight workers opening an empty database at once all start, and each migration is applied once."""
        await drop_postgres_schema()
        dbs = await asyncio.gather(*(pg.connect(POSTGRES_URL, max_size=2) for _ in range(8)))
        try:
            assert sorted(await migration_rows()) == [m.version for m in MIGRATIONS]
            store = pg.PostgresIdempotencyStore(dbs[3], 60)
            assert (await store.claim(A, "x", FP, 1.0, LEASE)).status is ClaimStatus.ACQUIRED
        finally:
            for db in dbs:
                await db.close()

    async def test_migrate_again_applies_nothing(self) -> None:
        """A worker starting on an up-to-date schema applies nothing and keeps the data."""
        await drop_postgres_schema()
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            assert await migrate(conn) == [m.version for m in MIGRATIONS]
            await conn.execute(
                "INSERT INTO switchboard_suppressions VALUES ('a', '+18885551234', 'STOP', 'test', 1.0)"
            )
            assert await migrate(conn) == []
            assert await conn.fetchval("SELECT count(*) FROM switchboard_suppressions") == 1
        finally:
            await conn.close()

    async def test_older_schema_is_upgraded_with_its_data(self) -> None:
        """A database left at version 1 by an older release gets only the newer migrations; data stays."""
        await drop_postgres_schema()
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            assert await migrate(conn, MIGRATIONS[:1]) == [1]
            await conn.execute(
                "INSERT INTO switchboard_suppressions VALUES ('a', '+18885551234', 'STOP', 'test', 1.0)"
            )
        finally:
            await conn.close()
        db = await pg.connect(POSTGRES_URL)
        try:
            assert sorted(await migration_rows()) == [m.version for m in MIGRATIONS]
            assert await pg.PostgresSuppressionList(db).contains("a", "+18885551234")
        finally:
            await db.close()

    def test_versions_are_in_order(self) -> None:
        """Migration versions are 1, 2, 3... with no gap or repeat, and LATEST is the last."""
        assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
        assert len(MIGRATIONS) == LATEST


class TestStoreURL:
    async def test_open_stores_selects_postgres(self) -> None:
        """A postgresql:// URL opens the PostgreSQL backend for all three stores."""
        await clean_postgres()
        stores = await open_stores(POSTGRES_URL, retention_seconds=60)
        try:
            assert stores.backend == "postgresql"
            assert isinstance(stores.suppressions, pg.PostgresSuppressionList)
        finally:
            await stores.close()

    async def test_unreachable_server_fails_at_start(self) -> None:
        """A URL nobody answers fails at start-up instead of later, mid-command."""
        with pytest.raises(OSError):
            await open_stores("postgresql://postgres@127.0.0.1:1/none", retention_seconds=60)


class TestDeduperForget:
    async def test_forget_makes_a_key_new_again(self) -> None:
        """After forget(key), the key is new again (a failed webhook delivery may be retried)."""
        await clean_postgres()
        stores = await open_stores(POSTGRES_URL, retention_seconds=60)
        try:
            deduper = stores.deduper
            assert isinstance(deduper, pg.PostgresDeduper)
            assert await deduper.first_time("k", time.time(), 60)
            await deduper.forget("k")
            assert await deduper.first_time("k", time.time(), 60)
        finally:
            await stores.close()


class TestBulkAdd:
    async def test_add_many_upserts_all_rows(self) -> None:
        """add_many() adds every row in one call and updates rows already there."""
        await clean_postgres()
        stores = await open_stores(POSTGRES_URL, retention_seconds=60)
        try:
            opt_outs = stores.suppressions
            assert isinstance(opt_outs, pg.PostgresSuppressionList)
            await opt_outs.add(A, "+18885550000", reason="old", source="x", now=1.0)
            await opt_outs.add_many((A, f"+1888555{n:04d}", "STOP", "import", 2.0) for n in range(1000))
            rows = await opt_outs.list(A)
            assert len(rows) == 1000
            assert rows[0] == {"account": A, "number": "+18885550000", "reason": "STOP", "source": "import",
                               "created_at": 1.0}  # fmt: skip
        finally:
            await stores.close()


class TestBatchedStatementPlans:
    """Each batched statement looks its keys up by primary key, whatever the table's size.

    Joined as a whole, jsonb_array_elements counts as 100 rows and the planner hashed a
    table of a few thousand rows or more: a scan of the whole table in every batch.
    """

    ROWS = 8000

    async def _plan(
        self, conn: asyncpg.Connection, sql: str, items: list[list[object]], *more: object
    ) -> str:
        rows = await conn.fetch("EXPLAIN " + sql, pg._rows(items), *more)
        return "\n".join(row[0] for row in rows)

    async def test_claim_complete_and_lookup_never_scan_a_table(self) -> None:
        await clean_postgres()
        stores = await open_stores(POSTGRES_URL, retention_seconds=60)
        await stores.close()  # the schema is there
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(
                "INSERT INTO switchboard_commands (account, command_id, fingerprint, status, attempts,"
                " first_attempt_at, event, expires_at)"
                " SELECT 'acct', 'cmd-' || g, 'fp', 'done', 1, 1.0, '\\x7b7d', 9e9 FROM generate_series(1, $1) g",
                self.ROWS,
            )
            await conn.execute(
                "INSERT INTO switchboard_suppressions (account, number, reason, source, created_at)"
                " SELECT 'acct', '+1888' || lpad(g::text, 7, '0'), 'STOP', 'test', 1.0"
                " FROM generate_series(1, $1) g",
                self.ROWS,
            )
            await conn.execute("ANALYZE switchboard_commands; ANALYZE switchboard_suppressions")
            keys = [["acct", f"cmd-{n}"] for n in range(8)]
            plans = {
                "claim": await self._plan(conn, pg._CLAIM_MANY, [[*k, "fp", 1.0, 2.0, 3.0] for k in keys]),
                "complete": await self._plan(
                    conn, pg._COMPLETE_MANY, [[*k, "fp", 1.0, 3.0] for k in keys], [b"{}"] * len(keys)
                ),
                "contains": await self._plan(
                    conn, pg._CONTAINS_MANY, [["acct", f"+1888{n:07d}"] for n in range(8)]
                ),
            }
        finally:
            await conn.close()
        for name, plan in plans.items():
            assert "Seq Scan on switchboard" not in plan, (name, plan)
            assert "Index" in plan, (name, plan)


class TestKeptConnections:
    async def test_a_kept_connection_lost_is_replaced(self) -> None:
        """A connection kept between calls that was lost meanwhile is not used: the next call gets another."""
        await clean_postgres()
        db = await pg.connect(POSTGRES_URL, max_size=3)
        try:
            assert await db.call("fetchval", "SELECT 1") == 1
            assert len(db._kept) == 1
            db._kept[0].terminate()
            assert await db.call("fetchval", "SELECT 2") == 2
        finally:
            await db.close()

    async def test_callers_waiting_on_a_small_pool_are_served(self) -> None:
        """More concurrent calls than a pool of two holds all finish: kept connections never starve the pool."""
        await clean_postgres()
        db = await pg.connect(POSTGRES_URL, max_size=2)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(db.call("fetchval", "SELECT $1::int FROM pg_sleep(0.01)", n) for n in range(20))
                ),
                timeout=30,
            )
            assert results == list(range(20))
            assert len(db._kept) <= 1
        finally:
            await db.close()


@pytest.fixture
async def pg_stores(server_restored: None) -> AsyncIterator[Stores]:
    await clean_postgres()
    stores = await open_stores(POSTGRES_URL, retention_seconds=3600)
    yield stores
    await stores.close()


@pytest.mark.drill
class TestRestart:
    async def test_restart_keeps_opt_outs_and_outcomes(self, pg_stores: Stores) -> None:
        """After a PostgreSQL restart, opt-outs are there, a finished command is DONE, a running one BUSY."""
        numbers = [f"+1888555{n:04d}" for n in range(100)]
        for number in numbers:
            await pg_stores.suppressions.add(A, number, reason="STOP", source="webhook", now=time.time())
        store = pg_stores.idempotency
        now = time.time()
        await store.claim(A, "sent", FP, now, LEASE)
        await store.complete(A, "sent", FP, b'{"status":"succeeded"}', now)
        await store.claim(A, "in-flight", FP, now, LEASE)

        await asyncio.to_thread(postgres_server.pg_ctl, "restart")

        # The same pool, not a new one: it must reconnect by itself.
        assert all([await pg_stores.suppressions.contains(A, number) for number in numbers])
        assert len(await pg_stores.suppressions.list(A)) == len(numbers)
        done = await store.claim(A, "sent", FP, time.time(), LEASE)
        assert (done.status, done.event) == (ClaimStatus.DONE, b'{"status":"succeeded"}')
        assert (await store.claim(A, "in-flight", FP, time.time(), LEASE)).status is ClaimStatus.BUSY

    async def test_outage_raises_store_unavailable_then_recovers(self, pg_stores: Stores) -> None:
        """While the server is down, calls fail with StoreUnavailable after the wait; then the pool recovers."""
        await pg_stores.suppressions.add(A, "+18885551234", reason="STOP", source="test", now=time.time())
        store = pg_stores.idempotency
        assert isinstance(store, pg.PostgresIdempotencyStore)
        store.db.outage_wait_seconds = 1.0
        await asyncio.to_thread(postgres_server.pg_ctl, "stop")
        started = time.monotonic()
        with pytest.raises(pg.StoreUnavailable):
            await store.claim(A, "during-outage", FP, time.time(), LEASE)
        with pytest.raises(pg.StoreUnavailable):
            await pg_stores.suppressions.contains(A, "+18885551234")
        assert time.monotonic() - started < 10
        await asyncio.to_thread(postgres_server.pg_ctl, "start")
        postgres_server.wait_until_accepting()
        store.db.outage_wait_seconds = pg.OUTAGE_WAIT_SECONDS
        assert await pg_stores.suppressions.contains(A, "+18885551234")
        assert (await store.claim(A, "during-outage", FP, time.time(), LEASE)).status is ClaimStatus.ACQUIRED

    async def test_traffic_through_a_restart_runs_nothing_twice(self, pg_stores: Stores) -> None:
        """Claims and completions racing a restart: every key is acquired at most once, outcomes kept."""
        store = pg_stores.idempotency
        acquired: dict[str, int] = {}
        completed: dict[str, bytes] = {}
        failures: list[BaseException] = []
        restarting = asyncio.Event()
        restarted = asyncio.Event()

        async def worker(name: str) -> None:
            n = 0
            while not restarted.is_set() or n < 40:
                key = f"{name}-{n}"
                n += 1
                try:
                    claim = await store.claim(A, key, FP, time.time(), LEASE)
                    if claim.status is ClaimStatus.ACQUIRED:
                        acquired[key] = acquired.get(key, 0) + 1
                        completed[key] = await store.complete(A, key, FP, key.encode(), time.time())
                except pg.StoreUnavailable as exc:
                    failures.append(exc)
                if n == 20:
                    restarting.set()
                await asyncio.sleep(0.005)

        async def restart() -> None:
            await restarting.wait()
            await asyncio.to_thread(postgres_server.pg_ctl, "restart")
            restarted.set()

        await asyncio.gather(restart(), *(worker(f"w{i}") for i in range(8)))

        # Every key any worker tried: asking again never acquires one that was acquired before.
        for key, count in acquired.items():
            assert count == 1
            again = await store.claim(A, key, FP, time.time(), LEASE)
            assert again.status in (ClaimStatus.DONE, ClaimStatus.BUSY)
            if key in completed:
                assert again.event == completed[key] == key.encode()
        assert len(completed) > 8 * 40  # traffic continued after the restart, on the same pool
