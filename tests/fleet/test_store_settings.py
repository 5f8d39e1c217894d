"""Store settings at scale: the PostgreSQL pool size, and Redis that keeps nothing on disk."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import pidj_env
from tests.store.conftest import POSTGRES_URL, ensure_postgres_database
from tests.support.worker import WorkerProcess, free_port
from worker.store import open_stores
from worker.store.redis import keeps_nothing_on_disk

pytestmark = pytest.mark.integration

SCHEMA = "switchboard_fleet_pool"
APP = "switchboard-fleet-pool-test"


async def test_postgres_pool_never_exceeds_the_setting() -> None:
    """With POSTGRES_POOL_SIZE=3, ten concurrent store calls use at most three server connections."""
    await ensure_postgres_database()
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
        stores = await open_stores(
            f"{POSTGRES_URL}?search_path={SCHEMA}&application_name={APP}",
            retention_seconds=60,
            postgres_pool_size=3,
        )
        try:
            db: Any = stores.idempotency.db  # type: ignore[attr-defined]
            calls = [db.call("fetchval", "SELECT pg_sleep(0.3)") for _ in range(10)]
            sleeping = asyncio.gather(*calls)
            await asyncio.sleep(0.15)
            opened = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", APP
            )
            await sleeping
        finally:
            await stores.close()
        assert opened == 3
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await admin.close()


class PrivateRedis:
    """A redis-server of this test's own on a free port (the shared one is never reconfigured)."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            != b"PONG"
        ):
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, "--save", "", "--appendonly", "no")
    yield server
    server.stop()


async def _probe(url: str) -> bool | None:
    client = aioredis.Redis.from_url(url)
    try:
        return await keeps_nothing_on_disk(client)
    finally:
        await client.aclose()


async def test_redis_persistence_is_read_and_a_disabled_config_tolerated(tmp_path: Path) -> None:
    """No save and no AOF reads as volatile; AOF on reads as durable; CONFIG renamed away reads as unknown."""
    cases = [
        (("--save", "", "--appendonly", "no"), True),
        (("--save", "", "--appendonly", "yes"), False),
        (("--save", "900 1", "--appendonly", "no"), False),
        (("--save", "", "--appendonly", "no", "--rename-command", "CONFIG", ""), None),
    ]
    for index, (args, expected) in enumerate(cases):
        directory = tmp_path / str(index)
        directory.mkdir()
        server = PrivateRedis(directory, *args)
        try:
            assert await _probe(server.url) is expected, args
        finally:
            server.stop()


def test_worker_warns_at_start_on_a_redis_store_that_keeps_nothing(
    broker: None, pidj: PidjSimulator, volatile_redis: PrivateRedis
) -> None:
    """A worker whose Redis store has neither snapshots nor AOF logs a warning at start, and still runs."""
    with WorkerProcess({**pidj_env(pidj), "SWITCHBOARD_STORE_URL": volatile_redis.url}) as worker:
        assert worker.get("/readyz")[0] == 200
        logs = worker.logs()
    assert "keeps nothing on disk" in logs


async def test_postgres_store_works_without_a_statement_cache() -> None:
    """With POSTGRES_STATEMENT_CACHE_SIZE=0 (PgBouncer transaction mode) claims and outcomes still work."""
    await ensure_postgres_database()
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
        stores = await open_stores(
            f"{POSTGRES_URL}?search_path={SCHEMA}", retention_seconds=60, postgres_statement_cache_size=0
        )
        try:
            db: Any = stores.idempotency.db  # type: ignore[attr-defined]
            async with db.pool.acquire() as conn:
                assert conn._stmt_cache.get_max_size() == 0
            now = time.time()
            claim = await stores.idempotency.claim("default", "c-1", "fp", now, 30)
            assert claim.status.value == "acquired"
            stored = await stores.idempotency.complete("default", "c-1", "fp", b"{}", now)
            assert stored == b"{}"
            assert (await stores.idempotency.claim("default", "c-1", "fp", now, 30)).event == b"{}"
        finally:
            await stores.close()
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await admin.close()


def test_worker_on_postgres_without_redis_warns_that_rate_limits_are_per_process(
    broker: None, pidj: PidjSimulator
) -> None:
    """A rate-limited account on a shared PostgreSQL store with no SWITCHBOARD_REDIS_URL is not silent: it warns."""
    schema = "switchboard_fleet_ratelimit"

    async def reset() -> None:
        await ensure_postgres_database()
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        finally:
            await admin.close()

    asyncio.run(reset())
    env = {
        **pidj_env(pidj, rate_limit_per_second=5),
        "SWITCHBOARD_STORE_URL": f"{POSTGRES_URL}?search_path={schema}",
    }
    try:
        with WorkerProcess(env) as worker:
            assert worker.get("/readyz")[0] == 200
            logs = worker.logs()
    finally:
        asyncio.run(_drop(schema))
    assert "rate limits are kept in each worker process" in logs
    assert "pidj/default" in logs


async def _drop(schema: str) -> None:
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await admin.close()
