"""Every store backend on a clean slate: a SQLite file, the machine's Redis, the machine's PostgreSQL.

``open_backend(retention_seconds=...)`` opens (and reopens) the stores of the
test's backend; everything it opened is closed at the end. Redis uses its own
database number and PostgreSQL its own database, both emptied before each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.store import postgres_server
from worker.store import Stores, open_stores

POSTGRES_ADMIN_URL = os.environ.get(
    "SWITCHBOARD_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
POSTGRES_DATABASE = "switchboard_test"
POSTGRES_URL = os.environ.get(
    "SWITCHBOARD_TEST_POSTGRES_URL", f"postgresql://postgres@127.0.0.1:5432/{POSTGRES_DATABASE}"
)
REDIS_URL = os.environ.get("SWITCHBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
POSTGRES_TABLES = (
    "switchboard_commands",
    "switchboard_suppressions",
    "switchboard_seen",
    "switchboard_controls",
    "switchboard_breakers",
)

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.integration),
    pytest.param("postgres", id="postgres", marks=pytest.mark.integration),
]


class OpenBackend(Protocol):
    async def __call__(self, *, retention_seconds: float = ...) -> Stores: ...


async def ensure_postgres_database() -> None:
    """Create the test database once (CREATE DATABASE cannot run inside the tests' own database)."""
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        if not await admin.fetchval("SELECT true FROM pg_database WHERE datname = $1", POSTGRES_DATABASE):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # created by a concurrent run
                await admin.execute(f'CREATE DATABASE "{POSTGRES_DATABASE}"')
    finally:
        await admin.close()


async def clean_postgres() -> None:
    await ensure_postgres_database()
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        existing = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename = ANY($1::text[])", POSTGRES_TABLES
        )
        if existing:
            await conn.execute("TRUNCATE " + ", ".join(row["tablename"] for row in existing))
    finally:
        await conn.close()


async def drop_postgres_schema() -> None:
    """Back to an empty database, as a new deployment finds it."""
    await ensure_postgres_database()
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS switchboard_schema_migrations, " + ", ".join(POSTGRES_TABLES) + " CASCADE"
        )
    finally:
        await conn.close()


async def clean_redis() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def backend_url(backend: str, tmp_path: Path) -> str:
    return {
        "sqlite": f"sqlite:///{tmp_path}/store.sqlite3",
        "redis": REDIS_URL,
        "postgres": POSTGRES_URL,
    }[backend]


@pytest.fixture
def server_restored() -> Iterator[None]:
    """Whatever a drill does to it, PostgreSQL is running again afterwards."""
    postgres_server.ensure_running()
    yield
    postgres_server.ensure_running()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def open_backend(backend: str, tmp_path: Path) -> AsyncIterator[OpenBackend]:
    """Opens the stores of ``backend``; the backend starts empty and everything opened is closed after."""
    if backend == "redis":
        await clean_redis()
    elif backend == "postgres":
        await clean_postgres()
    opened: list[Stores] = []

    async def open_(*, retention_seconds: float = 3600.0) -> Stores:
        stores = await open_stores(backend_url(backend, tmp_path), retention_seconds=retention_seconds)
        opened.append(stores)
        return stores

    yield open_
    for stores in opened:
        with contextlib.suppress(Exception):  # closed by the test already (reopen tests)
            await stores.close()


@pytest.fixture
async def stores(open_backend: OpenBackend) -> Stores:
    """The stores of one backend, empty, with a retention of an hour."""
    return await open_backend()


async def wait_past(moment: float) -> None:
    """Until the wall clock is past ``moment`` (Redis expires keys by its own clock, so tests use the real one)."""
    delay = moment - time.time()
    if delay > 0:
        await asyncio.sleep(delay + 0.01)
    assert time.time() > moment
