"""Per vendor-account request rate limits.

Local: a token bucket in the process. Shared: a GCRA in Redis (one Lua call
per request), so N workers together stay under the vendor's limit. Waiting
for a token is short (a fraction of a second at the configured rate); a
command that would wait long is better retried, which the vendor's own 429
already does.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

_GCRA = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tat + interval - now) * 1000) + 1000)
return '0'
"""


class TokenBucket:
    """At most ``rate`` requests/s on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = rate
        self.capacity = float(burst or max(1, int(rate)))
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class RedisRateLimiter:
    """The same limit shared by every worker that uses this Redis."""

    def __init__(self, client: aioredis.Redis, key: str, rate: float, burst: int | None = None) -> None:
        self.key = f"sb:rate:{key}"
        self.interval = 1.0 / rate
        self.burst = burst or max(1, int(rate))
        self._script = client.register_script(_GCRA)

    async def acquire(self) -> None:
        while True:
            wait = float(
                await self._script(keys=[self.key], args=[repr(time.time()), repr(self.interval), self.burst])
            )
            if wait <= 0:
                return
            await asyncio.sleep(wait)
