"""Opening the configured store: ``sqlite:///path`` (default) or ``redis://...``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from worker.store.base import Claim, ClaimStatus, Deduper, IdempotencyStore, SuppressionList

__all__ = ["Claim", "ClaimStatus", "Deduper", "IdempotencyStore", "Stores", "SuppressionList", "open_stores"]


@dataclass(frozen=True)
class Stores:
    idempotency: IdempotencyStore
    suppressions: SuppressionList
    deduper: Deduper
    backend: str

    async def close(self) -> None:
        await self.idempotency.close()


def sqlite_path(url: str) -> str:
    """``sqlite:///var/x.db`` -> ``var/x.db`` (relative); ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    rest = url[len("sqlite://") :]
    return rest[1:] if rest.startswith("/") else rest


async def open_stores(url: str, *, retention_seconds: float) -> Stores:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from worker.store import sqlite

        conn = sqlite.connect(sqlite_path(url) or ":memory:")
        return Stores(
            sqlite.SQLiteIdempotencyStore(conn, retention_seconds),
            sqlite.SQLiteSuppressionList(conn),
            sqlite.SQLiteDeduper(conn),
            "sqlite",
        )
    if scheme in ("redis", "rediss", "unix"):
        import redis.asyncio as aioredis

        from worker.store import redis as redis_store

        client = aioredis.Redis.from_url(url)
        await client.ping()
        return Stores(
            redis_store.RedisIdempotencyStore(client, retention_seconds),
            redis_store.RedisSuppressionList(client),
            redis_store.RedisDeduper(client),
            "redis",
        )
    raise ValueError(
        f"SWITCHBOARD_STORE_URL: unsupported store {scheme!r} (use sqlite:///path or redis://host:port/db)"
    )
