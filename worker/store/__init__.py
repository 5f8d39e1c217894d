"""Opening the configured store: ``sqlite:///path`` (default), ``redis://...`` or ``postgresql://...``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from worker.store.base import (
    AsksAhead,
    BreakerRecord,
    BreakerStore,
    Claim,
    ClaimStatus,
    ControlStore,
    Deduper,
    IdempotencyStore,
    Lease,
    RecipientAskedAhead,
    SuppressionList,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

REDIS_POOL_SIZE = 64

__all__ = [
    "AsksAhead",
    "BreakerRecord",
    "BreakerStore",
    "Claim",
    "ClaimStatus",
    "Deduper",
    "IdempotencyStore",
    "Lease",
    "RecipientAskedAhead",
    "Stores",
    "SuppressionList",
    "open_stores",
]


@dataclass(frozen=True)
class Stores:
    idempotency: IdempotencyStore
    suppressions: SuppressionList
    deduper: Deduper
    backend: str
    controls: ControlStore | None = None
    """Operator controls (pause, cancel); every backend but a future one without them."""
    breakers: BreakerStore | None = None
    """Circuit breakers shared by the fleet (None: each worker keeps its own)."""
    redis: aioredis.Redis | None = None
    """The Redis store's client and pool: the runtime's rate limits share it when on the same Redis."""

    async def close(self) -> None:
        await self.idempotency.close()


def sqlite_path(url: str) -> str:
    """``sqlite:///var/x.db`` -> ``var/x.db`` (relative); ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    rest = url[len("sqlite://") :]
    return rest[1:] if rest.startswith("/") else rest


async def open_stores(
    url: str,
    *,
    retention_seconds: float,
    postgres_pool_size: int | None = None,
    postgres_statement_cache_size: int | None = None,
) -> Stores:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from worker.store import sqlite

        conn = sqlite.connect(sqlite_path(url) or ":memory:")
        return Stores(
            sqlite.SQLiteIdempotencyStore(conn, retention_seconds),
            sqlite.SQLiteSuppressionList(conn),
            sqlite.SQLiteDeduper(conn),
            "sqlite",
            sqlite.SQLiteControlStore(conn),
            sqlite.SQLiteBreakerStore(conn),
        )
    if scheme in ("redis", "rediss", "unix"):
        import redis.asyncio as aioredis

        from worker.store import redis as redis_store

        # Blocking pool: with more commands in flight than connections, callers wait for one;
        # the default pool raises MaxConnectionsError past 100 concurrent operations.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=REDIS_POOL_SIZE, timeout=10)
        client = aioredis.Redis.from_pool(pool)
        await client.ping()
        pipeliner = redis_store.Pipeliner(client)
        return Stores(
            redis_store.RedisIdempotencyStore(client, retention_seconds, pipeliner),
            redis_store.RedisSuppressionList(client, pipeliner),
            redis_store.RedisDeduper(client),
            "redis",
            redis_store.RedisControlStore(client),
            redis_store.RedisBreakerStore(client),
            client,
        )
    if scheme in ("postgresql", "postgres"):
        from worker.store import postgres

        db = await postgres.connect(
            url,
            max_size=postgres_pool_size or postgres.POOL_MAX_SIZE,
            statement_cache_size=(
                postgres.STATEMENT_CACHE_SIZE
                if postgres_statement_cache_size is None
                else postgres_statement_cache_size
            ),
        )
        return Stores(
            postgres.PostgresIdempotencyStore(db, retention_seconds),
            postgres.PostgresSuppressionList(db),
            postgres.PostgresDeduper(db),
            "postgresql",
            postgres.PostgresControlStore(db),
            postgres.PostgresBreakerStore(db),
        )
    raise ValueError(
        f"SWITCHBOARD_STORE_URL: unsupported store {scheme!r}"
        " (use sqlite:///path, redis://host:port/db or postgresql://user@host/db)"
    )
